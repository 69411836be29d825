"""Every exception class selib defines survives pickling with its arguments: errors and statuses cross
into and out of worker processes (the metric pool, quick-start jobs), where one that cannot be rebuilt
breaks the whole pool instead of one utterance."""
from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import selib


def _selib_exceptions() -> list[type[BaseException]]:
    classes = []
    for module in pkgutil.walk_packages(selib.__path__, "selib."):
        if module.name != "selib.__main__":                # importing it runs the command line
            classes += [c for c in vars(importlib.import_module(module.name)).values()
                        if isinstance(c, type) and issubclass(c, BaseException)
                        and c.__module__ == module.name]
    return classes


def _arguments(cls: type[BaseException]) -> tuple:
    """One distinct string per parameter of a constructor selib wrote, else a message."""
    own = next((c.__init__ for c in cls.__mro__
                if c.__module__.startswith("selib") and "__init__" in vars(c)), None)
    if own is None:
        return ("selib.wav: a one-line message; the fix.",)
    params = list(inspect.signature(own).parameters.values())[1:]
    return tuple(f"<{p.name}>" for p in params if p.default is inspect.Parameter.empty)


def test_every_selib_exception_pickles_with_its_arguments():
    classes = _selib_exceptions()
    assert {"MetricError", "AudioError", "CheckpointError", "ConfigError", "ModelOutputError",
            "TrainingDiverged", "DownloadError", "DatasetMissing"} <= {c.__name__ for c in classes}
    for cls in classes:
        error = cls(*_arguments(cls))
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and str(copy) == str(error), cls
        assert copy.args == error.args and vars(copy) == vars(error), cls
