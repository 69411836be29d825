"""The code that knows the repository's paths (``configs/``, ``teachers/``, ``runs/lessons``): the
shipped course teachers (:mod:`~selib.course.teachers`), the quick start (:mod:`~selib.course.quickstart`),
the regime grids (:mod:`~selib.course.regimes`, :mod:`~selib.course.regimes_summary`) and the lessons'
shared helpers (:mod:`~selib.course.lessons`). The library below it takes every path
as an argument."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]   # the repository this package is installed from
