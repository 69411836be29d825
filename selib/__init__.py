"""selib: knowledge distillation for speech enhancement, the library under the course.

The modules follow the lessons: ``audio`` (I/O and the STFT), ``data`` (corpora), ``metrics``,
``models``, ``losses``, ``kd``, ``train``, ``experiments``, ``plots`` and ``profile``.
"""
__version__ = "0.1.0"
