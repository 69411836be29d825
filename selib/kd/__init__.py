"""Knowledge distillation methods for SE, picked by name: ``selib.kd.build(method, student, teacher, ...)``.

Lessons: ``07_logit_kd`` (``logits-*``), ``08_frequency_adapter`` and ``09_dfkd`` (``dfkd``),
``10_i2s_tfckd`` (``i2s-tfckd``). Every method is a :class:`Distiller`:
``loss, parts = distiller(student_out, clean, noisy, teacher_out, student_features, teacher_features)``
with ``loss = L_SE(student_out, clean) + weight * KD``. Teacher outputs and features are detached here
too, so no gradient ever reaches the teacher; the distiller's own parameters (I²S-TFCKD's calibration
MLPs and fusion blocks) are trained with the student.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from selib import losses
from selib.constants import KD_METHODS as METHODS   # in the order reports list them
from selib.kd.adapter import RULES, FrequencyAdapter
from selib.kd.cache import TeacherCache
from selib.kd.dfkd import DFKDLoss, cosine_distance
from selib.kd.logits import LogitKD
from selib.kd.tfc import I2STFCKD, ResidualFusion, TFCalibration, from_models, jeffreys, relation_freq, \
    relation_time


def _names(cls: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Keyword options of a KD term: its constructor's parameters (the defaults live there)."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(n for n in params if n not in ("self", *skip))


_STFT_OPTIONS = _names(LogitKD, skip=("kind", "normalise", "eps"))
_DFKD_OPTIONS = _names(DFKDLoss)
_I2S_OPTIONS = _names(I2STFCKD, skip=("student_shapes", "teacher_shapes", "batch_size", "segment_samples"))
OPTIONS = {
    "none": (), "logits-mse": ("normalise",), "logits-sisnr": (), "logits-spec": _STFT_OPTIONS,
    "dfkd": _DFKD_OPTIONS, "i2s-tfckd": _I2S_OPTIONS,
    "dfkd+i2s-tfckd": ("dfkd_weight", "i2s_weight", *_DFKD_OPTIONS, *_I2S_OPTIONS),
}


def _float(features: dict | None, detach: bool = False) -> dict | None:
    if features is None:
        return None
    return {k: [(z.detach() if detach else z).float() for z in v] for k, v in features.items()}


class Distiller(nn.Module):
    """One KD method: ``L_SE(student_out, clean) + weight * sum_k w_k KD_k`` over its KD terms.

    ``terms`` maps a name to ``(w_k, module)``; each module is called as
    ``module(student_out, teacher_out, student_features, teacher_features) -> (loss, parts)``, and with
    ``clean=`` and ``labelled=`` too when its ``needs_clean`` is true (DFKD's knowledge-gap mask).
    ``noisy`` is part of the common interface; none of selib's methods needs it. KD terms run in
    float32 with autocast off (relations, logarithms and STFTs need the range and precision).
    """

    def __init__(self, method: str, se_loss: Callable, weight: float = 1.0,
                 terms: dict[str, tuple[float, nn.Module]] | None = None):
        super().__init__()
        self.method, self.se_loss, self.weight = method, se_loss, float(weight)
        terms = terms or {}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.term_weights = {name: float(w) for name, (w, _) in terms.items()}

    @property
    def needs_features(self) -> bool:
        return any(term.needs_features for term in self.terms.values())

    @property
    def last_split_hz(self) -> torch.Tensor | None:
        """DFKD's split frequencies (Hz, 1-D) of the last batch, for histograms; None without DFKD."""
        return self.terms["dfkd"].last_split_hz if "dfkd" in self.terms else None

    def step_counts(self) -> dict[str, torch.Tensor]:
        """Counts a term keeps about the last batch (DFKD: frames per split bin), by term name; a
        trainer sums them over an epoch (and over processes) and passes them to :meth:`epoch_summary`."""
        counts = {name: getattr(term, "step_counts", lambda: None)() for name, term in self.terms.items()}
        return {name: c for name, c in counts.items() if c is not None}

    def epoch_summary(self, counts: dict[str, torch.Tensor]) -> dict:
        """The history entries each term makes of its summed :meth:`step_counts`."""
        out = {}
        for name, total in counts.items():
            out.update(self.terms[name].epoch_summary(total))
        return out

    def forward(self, student_out: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor | None = None,
                teacher_out: torch.Tensor | None = None, student_features: dict | None = None,
                teacher_features: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        se, kd, parts = self.split(student_out, clean, noisy, teacher_out, student_features, teacher_features)
        return self.combine(se, kd), parts

    def combine(self, se: torch.Tensor, kd: torch.Tensor | None, supervised: bool = True) -> torch.Tensor:
        """The training loss ``L_SE + weight * KD`` from the two parts :meth:`split` returns; without
        ``supervised`` (the KD-only steps of a two-step schedule) ``weight * KD`` alone."""
        if kd is None:
            return se
        return se + self.weight * kd if supervised else self.weight * kd

    def split(self, student_out: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor | None = None,
              teacher_out: torch.Tensor | None = None, student_features: dict | None = None,
              teacher_features: dict | None = None, labelled: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """``(L_SE, KD or None, parts)``: the loss before weighting, so that a trainer can measure the
        gradient of each part (``kd.balance``, the logged gradient ratio). ``labelled`` (``[B]`` bool)
        marks the rows whose ``clean`` is a reference: L_SE is the mean over those rows only, KD is taken
        over every row (rows of a transfer set have noisy audio and no reference; None: all labelled)."""
        if labelled is None:
            se = self.se_loss(student_out, clean)
        elif bool(labelled.any()):
            se = self.se_loss(student_out[labelled], clean[labelled])
        else:
            se = student_out.new_zeros(())
        parts = {"se": float(se.detach())}
        if not self.terms:
            return se, None, parts
        if teacher_out is None:
            raise ValueError(f"KD method {self.method!r} needs teacher_out (the frozen teacher's output)")
        teacher_out = teacher_out.detach().float()
        teacher_features = _float(teacher_features, detach=True)
        student_out, student_features = student_out.float(), _float(student_features)
        kd = 0.0
        with torch.autocast(student_out.device.type, enabled=False):
            for name, term in self.terms.items():
                reference = ({"clean": clean.float(), "labelled": labelled}
                             if getattr(term, "needs_clean", False) else {})
                value, term_parts = term(student_out, teacher_out, student_features, teacher_features, **reference)
                kd = kd + self.term_weights[name] * value
                parts.update(term_parts)
                if len(self.terms) > 1:
                    parts[name] = float(value.detach())
        parts["kd"] = float(kd.detach())
        return se, kd, parts


def build(method: str, student: nn.Module | None = None, teacher: nn.Module | None = None,
          weight: float = 1.0, options: dict | None = None, se_loss: str | Callable = "sisnr",
          batch_size: int | None = None, segment_samples: int | None = None) -> Distiller:
    """Build the :class:`Distiller` of ``method`` (one of :data:`METHODS`).

    ``options`` are the method's settings (:data:`OPTIONS`; e.g. DFKD's ``rule``, ``beta``, STFT
    set-up; the combination's ``dfkd_weight`` and ``i2s_weight``). ``se_loss`` is a
    :func:`selib.losses.se_loss` name or a callable ``(est, ref) -> scalar``. I²S-TFCKD is built for a
    fixed ``(batch_size, segment_samples)``: shapes come from a dry forward pass of both models.
    """
    if method not in METHODS:
        raise ValueError(f"unknown KD method {method!r}; choose one of {list(METHODS)}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS[method]))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for KD method {method!r}; valid options: "
                         f"{list(OPTIONS[method]) or 'none'}")
    for name, value in [("weight", weight)] + [(k, options[k]) for k in ("dfkd_weight", "i2s_weight") if k in options]:
        if value < 0:
            raise ValueError(f"KD {name}={value} must be >= 0")
    se = losses.se_loss(se_loss) if isinstance(se_loss, str) else se_loss
    if method == "none":
        return Distiller(method, se, weight)
    if teacher is None:
        raise ValueError(f"KD method {method!r} needs a teacher model; pass teacher=... (or use method 'none')")
    if method.startswith("logits-"):
        return Distiller(method, se, weight, {"logits": (1.0, LogitKD(method[len("logits-"):], **options))})
    terms = {}
    if "dfkd" in method.split("+"):
        dfkd_options = {k: v for k, v in options.items() if k in _DFKD_OPTIONS}
        terms["dfkd"] = (options.get("dfkd_weight", 1.0), DFKDLoss(**dfkd_options))
    if "i2s-tfckd" in method.split("+"):
        if student is None or batch_size is None or segment_samples is None:
            raise ValueError("KD method 'i2s-tfckd' is built for a fixed batch: pass student=..., "
                             "batch_size=... and segment_samples=... (segment_seconds * 16000)")
        i2s_options = {k: v for k, v in options.items() if k in _I2S_OPTIONS}
        terms["i2s"] = (options.get("i2s_weight", 1.0),
                        from_models(student, teacher, int(batch_size), int(segment_samples), **i2s_options))
    return Distiller(method, se, weight, terms)


__all__ = ["METHODS", "OPTIONS", "RULES", "Distiller", "DFKDLoss", "FrequencyAdapter", "I2STFCKD", "LogitKD",
           "ResidualFusion", "TeacherCache", "TFCalibration", "build", "cosine_distance", "from_models",
           "jeffreys", "relation_freq", "relation_time"]
