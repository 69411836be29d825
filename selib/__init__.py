"""selib: knowledge distillation for speech enhancement, the library under the course.

The modules follow the lessons: ``audio`` (I/O and the STFT), ``data`` (corpora), ``metrics``,
``models``, ``losses``, ``kd``, ``train``, ``evaluation``, ``inference`` and ``streaming``, ``runner``
and ``report``, ``plots`` and ``profile``; ``course`` holds what knows the repository's paths.
"""
__version__ = "0.1.0"
