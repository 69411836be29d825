"""What every selib model shares: the waveform-in/waveform-out interface and the preset registry.

Lesson ``03_dccrn`` introduces the interface; each family's module defines ``MODEL`` (its class) and
``PRESETS`` (preset name -> constructor keyword arguments), and :func:`build` puts them together.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from selib import constants

FAMILIES = {name: f"selib.models.{name}" for name in constants.FAMILIES}   # family -> its module
STAGES = ("encoder", "middle", "decoder")


class SEModel(nn.Module):
    """Base class: ``forward(noisy [B, T]) -> enhanced [B, T]`` for any T.

    With ``return_features=True`` the model returns ``(enhanced, features)`` where ``features`` maps
    ``encoder``/``middle``/``decoder`` to lists of ``[B, C, T', F']`` tensors (``F' = 1`` for
    time-domain models). Subclasses set ``causal`` and ``lookahead`` (in samples, the future context
    one output sample depends on; ``None`` for non-causal models).
    """

    sample_rate: int = 16000
    causal: bool = False
    lookahead: int | None = None
    family: str = ""
    preset: str = ""

    def forward(self, noisy: torch.Tensor, return_features: bool = False):  # pragma: no cover
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _family(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[name])


def presets(family: str) -> dict[str, dict]:
    """The named presets of a family (preset name -> constructor keyword arguments)."""
    return dict(_family(family).PRESETS)


def build(family: str, preset: str, **overrides) -> SEModel:
    """Build a model from a named preset, e.g. ``build("dccrn", "tiny-student")``.

    Keyword arguments override single constructor arguments of the preset.
    """
    module = _family(family)
    if preset not in module.PRESETS:
        raise ValueError(
            f"unknown preset {preset!r} for model family {family!r}; choose one of {sorted(module.PRESETS)}"
        )
    model = module.MODEL(**{**module.PRESETS[preset], **overrides})
    model.family, model.preset = family, preset
    return model
