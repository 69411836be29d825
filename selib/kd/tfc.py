"""I²S-TFCKD: intra/inter-set feature KD with time-frequency calibration (arXiv 2506.13127).

Lesson ``10_i2s_tfckd``; equations and sources: docs/kd.md, "I²S-TFCKD". Features come grouped in three
correlated sets (``encoder``, ``middle``, ``decoder``), each a list of ``[B, C, T, F]`` tensors sharing the
frame axis T. Every feature is read as one vector per frame, ``X [B, T, C*F]``, so layers of any C and F
can be compared:

- relations: ``P = (1 + cos) / 2``, row-normalised, over frames of one utterance (time stream,
  ``[B, T, T]``) and over the batch within one frame (frequency stream, ``[B, T, B]``);
- divergence: Jeffreys ``(P - Q) (log(P + eps) - log(Q + eps))``;
- calibration: per-layer query (student) and key (teacher) MLPs on the raw Gram matrices give
  weights ``alpha [B, T, N_S, N_T]`` per stream, a softmax over teacher layers;
- :class:`TFCalibration` is the calibrated loss ``L_TFC`` of one set (all N_S x N_T pairs);
- :class:`ResidualFusion` fuses one set into its representative feature;
- :class:`I2STFCKD` sums ``L_enc + L_mid + L_dec + L_inter``.

Gradient paths (docs/kd.md#gradient-paths): teacher features are detached everywhere, except that in the
inter-set block the teacher's fused features feed the key MLPs undetached, so the teacher-side fusion
modules learn only through alpha. Nothing reaches the teacher network itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selib.models.base import STAGES

SET_NAMES = {"encoder": "enc", "middle": "mid", "decoder": "dec"}


def frame_vectors(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, F] -> [B, T, C*F]``: one vector per frame."""
    if feature.dim() != 4:
        raise ValueError(f"I²S-TFCKD features must be [B, C, T, F] tensors, got shape {tuple(feature.shape)}")
    b, c, t, f = feature.shape
    return feature.permute(0, 2, 1, 3).reshape(b, t, c * f)


def gram_time(x: torch.Tensor) -> torch.Tensor:
    """Raw inner products between the frames of each utterance: ``[B, T, D] -> [B, T, T]``."""
    return x @ x.transpose(1, 2)


def gram_freq(x: torch.Tensor) -> torch.Tensor:
    """Raw inner products between the batch's vectors at each frame: ``[B, T, D] -> [B, T, B]``."""
    return torch.einsum("btd,ctd->btc", x, x)


def _relation(cos: torch.Tensor) -> torch.Tensor:
    prob = ((1.0 + cos) / 2.0).clamp_min(0.0)
    return prob / prob.sum(dim=-1, keepdim=True)


def relation_time(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Time-stream relation ``P[b, t, t']``: ``(1 + cos) / 2`` between frames, rows sum to 1."""
    xn = x / (x.norm(dim=-1, keepdim=True) + eps)
    return _relation(gram_time(xn))


def relation_freq(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Frequency-stream relation ``P[b, t, b']``: ``(1 + cos) / 2`` across the batch per frame, rows sum
    to 1."""
    xn = x / (x.norm(dim=-1, keepdim=True) + eps)
    return _relation(gram_freq(xn))


def jeffreys(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Element-wise symmetric KL ``(p - q) (log(p + eps) - log(q + eps))`` (eps: selib's fix)."""
    return (p - q) * (torch.log(p + eps) - torch.log(q + eps))


class _Embed(nn.Module):
    """Linear -> ReLU -> Linear on the last axis, then L2-normalised over axis 1 (the T axis, as the demo does)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_out))

    def forward(self, gram: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(gram), dim=1)


class TFCalibration(nn.Module):
    """Calibrated loss ``L_TFC`` of one set, for a fixed batch size and frame count
    (docs/kd.md#fixed-batch-and-segment).

    ``forward(student, teacher_keys, teacher_values)`` takes lists of frame vectors ``[B, T, D]`` (N_S
    student layers, N_T teacher layers; keys feed the key MLPs, values the relation targets) and returns
    ``(loss, alpha_time, alpha_freq)`` with both alphas ``[B, T, N_S, N_T]``.
    """

    def __init__(self, n_student: int, n_teacher: int, batch_size: int, frames: int, freq_ratio: int = 2,
                 cos_eps: float = 1e-6, log_eps: float = 1e-8):
        super().__init__()
        self.n_student, self.n_teacher = n_student, n_teacher
        self.cos_eps, self.log_eps = cos_eps, log_eps
        time = lambda: _Embed(frames, 2 * frames, frames)  # noqa: E731
        freq = lambda: _Embed(batch_size, freq_ratio * batch_size, freq_ratio * batch_size)  # noqa: E731
        self.query_time = nn.ModuleList(time() for _ in range(n_student))
        self.key_time = nn.ModuleList(time() for _ in range(n_teacher))
        self.query_freq = nn.ModuleList(freq() for _ in range(n_student))
        self.key_freq = nn.ModuleList(freq() for _ in range(n_teacher))

    @staticmethod
    def _alpha(queries: list[torch.Tensor], keys: list[torch.Tensor]) -> torch.Tensor:
        q, k = torch.stack(queries, dim=2), torch.stack(keys, dim=2)  # [B, T, N, E]
        return torch.einsum("btie,btje->btij", q, k).softmax(dim=-1)

    def forward(self, student: list[torch.Tensor], teacher_keys: list[torch.Tensor],
                teacher_values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha_time = self._alpha([m(gram_time(x)) for m, x in zip(self.query_time, student)],
                                 [m(gram_time(x)) for m, x in zip(self.key_time, teacher_keys)])
        alpha_freq = self._alpha([m(gram_freq(x)) for m, x in zip(self.query_freq, student)],
                                 [m(gram_freq(x)) for m, x in zip(self.key_freq, teacher_keys)])
        loss = 0.0
        for relation, alpha in ((relation_time, alpha_time), (relation_freq, alpha_freq)):
            p_student = torch.stack([relation(x, self.cos_eps) for x in student])  # [N_S, B, T, *]
            p_teacher = torch.stack([relation(x.detach(), self.cos_eps) for x in teacher_values])
            div = jeffreys(p_teacher[None], p_student[:, None], self.log_eps)  # [N_S, N_T, B, T, *]
            # alpha weights row t; sum over t, mean over (b, last axis), sum over pairs, / N_S
            weighted = torch.einsum("btij,ijbtu->", alpha, div)
            loss = loss + weighted / (div.shape[2] * div.shape[4] * self.n_student)
        return loss, alpha_time, alpha_freq


class ResidualFusion(nn.Module):
    """Residual (attention-gated) fusion of one set into its representative feature.

    ``u_k = PReLU(IN(conv1x1(x_k)))`` to ``mid_channels``; ``r_1 = u_1``; for k > 1 the previous ``r``
    is resized (nearest) to ``x_k``'s (T, F), two sigmoid gates ``a, c`` come from a 1x1 conv of
    ``[u_k; r]`` and ``r_k = a u_k + c r``. The output ``PReLU(IN(conv3x3(r_n)))`` has ``x_n``'s
    channels; only this last output is kept, so only the last layer has an output conv.
    """

    def __init__(self, channels: list[int], mid_channels: int = 128):
        super().__init__()
        self.inputs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, mid_channels, 1, bias=False), nn.InstanceNorm2d(mid_channels, affine=True),
                          nn.PReLU(mid_channels))
            for c in channels)
        self.gates = nn.ModuleList(nn.Conv2d(2 * mid_channels, 2, 1) for _ in channels[1:])
        self.output = nn.Sequential(nn.Conv2d(mid_channels, channels[-1], 3, padding=1, bias=False),
                                    nn.InstanceNorm2d(channels[-1], affine=True), nn.PReLU(channels[-1]))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        residual = self.inputs[0](features[0])
        for inp, gate, x in zip(self.inputs[1:], self.gates, features[1:]):
            u = inp(x)
            previous = F.interpolate(residual, size=u.shape[-2:], mode="nearest")
            a, c = torch.sigmoid(gate(torch.cat([u, previous], dim=1))).chunk(2, dim=1)
            residual = a * u + c * previous
        return self.output(residual)


def _fusion_order(stage: str, features: list) -> list:
    """Decoder features are fused from the mask backwards (the demo's processing order), the others forwards."""
    return features[::-1] if stage == "decoder" else list(features)


class I2STFCKD(nn.Module):
    """``loss(student_out, teacher_out, student_features, teacher_features) -> (KD, parts)`` with
    KD = ``L_enc + L_mid + L_dec + L_inter`` (the outputs serve only the batch-shape check).

    Built for fixed shapes: ``student_shapes``/``teacher_shapes`` map each stage to its list of
    ``(C, T, F)`` and ``batch_size`` is B. :func:`from_models` discovers them with a dry forward pass.
    Features with more than ``max_frames`` frames are average-pooled along T by the smallest integer
    factor that brings them to at most ``max_frames`` (a selib extension; ``None`` turns it off).
    Parts: ``enc``, ``mid``, ``dec``, ``inter`` and the mean alpha per pair,
    ``alpha_<set>_<time|freq>_s<i>t<j>``; ``last_alpha`` keeps the same as ``[N_S, N_T]`` tensors.
    """

    needs_features = True

    def __init__(self, student_shapes: dict, teacher_shapes: dict, batch_size: int, freq_ratio: int = 2,
                 mid_channels: int = 128, cos_eps: float = 1e-6, log_eps: float = 1e-8,
                 max_frames: int | None = 512, segment_samples: int | None = None):
        super().__init__()
        self.segment_samples = segment_samples
        frames = {shape[1] for side in (student_shapes, teacher_shapes) for st in STAGES for shape in side[st]}
        if len(frames) != 1:
            raise ValueError(f"I²S-TFCKD needs one frame axis T shared by every student and teacher feature, "
                             f"got T values {sorted(frames)}; use models with the same frame rate "
                             f"(STFT hop) for teacher and student")
        self.raw_frames, self.batch_size = frames.pop(), batch_size
        if max_frames is not None and max_frames < 2:
            raise ValueError(f"I²S-TFCKD max_frames={max_frames} must be >= 2 (or None for no pooling)")
        self.pool = 1 if max_frames is None else -(-self.raw_frames // max_frames)
        self.frames = -(-self.raw_frames // self.pool)
        self.student_shapes = {st: [tuple(s) for s in student_shapes[st]] for st in STAGES}
        self.teacher_shapes = {st: [tuple(s) for s in teacher_shapes[st]] for st in STAGES}
        calib = dict(batch_size=batch_size, frames=self.frames, freq_ratio=freq_ratio, cos_eps=cos_eps,
                     log_eps=log_eps)
        self.intra = nn.ModuleDict({st: TFCalibration(len(student_shapes[st]), len(teacher_shapes[st]), **calib)
                                    for st in STAGES})
        self.inter = TFCalibration(len(STAGES), len(STAGES), **calib)
        fuse = lambda shapes, st: ResidualFusion([s[0] for s in _fusion_order(st, shapes[st])],  # noqa: E731
                                                 mid_channels)
        self.student_fusion = nn.ModuleDict({st: fuse(student_shapes, st) for st in STAGES})
        self.teacher_fusion = nn.ModuleDict({st: fuse(teacher_shapes, st) for st in STAGES})
        self.last_alpha: dict[str, torch.Tensor] = {}

    def check(self, features: dict, side: str) -> None:
        """Raise a clear error unless ``features`` have the shapes this module was built for."""
        expected = self.student_shapes if side == "student" else self.teacher_shapes
        for st in STAGES:
            if st not in features:
                raise ValueError(f"I²S-TFCKD: the {side} features have no {st!r} set; the model must return "
                                 f"features for {list(STAGES)} (model(noisy, return_features=True))")
            got = [tuple(z.shape) for z in features[st]]
            want = [(self.batch_size, *s) for s in expected[st]]
            if got != want:
                raise ValueError(
                    f"I²S-TFCKD was built for batch size B={self.batch_size} and T={self.raw_frames} frames, but "
                    f"the {side} {st} features have shapes {got} (expected {want}); train with a fixed "
                    f"batch size (drop_last=True) and fixed-length segments, or rebuild the distiller")

    def check_batch(self, student_out: torch.Tensor) -> None:
        """Raise a clear error unless the output batch is ``[batch_size, segment_samples]``."""
        want = (self.batch_size, self.segment_samples or student_out.shape[-1])
        if tuple(student_out.shape) != want:
            raise ValueError(
                f"I²S-TFCKD was built for batches of B={want[0]} segments of T={want[1]} samples, but received "
                f"B={student_out.shape[0]}, T={student_out.shape[-1]}; train with batch_size={want[0]} "
                f"(drop_last=True) and {want[1]}-sample segments, or rebuild the distiller for the new shape")

    def forward(self, student_out, teacher_out, student_features: dict, teacher_features: dict
                ) -> tuple[torch.Tensor, dict[str, float]]:
        if student_features is None or teacher_features is None:
            raise ValueError("I²S-TFCKD needs student_features and teacher_features "
                             "(model(noisy, return_features=True))")
        self.check_batch(student_out)
        self.check(student_features, "student")
        self.check(teacher_features, "teacher")
        student_features = {st: [self._pool(z) for z in student_features[st]] for st in STAGES}
        teacher_features = {st: [self._pool(z.detach()) for z in teacher_features[st]] for st in STAGES}
        parts, total = {}, 0.0
        reps_student, reps_teacher = [], []
        for st in STAGES:
            student = [frame_vectors(z) for z in student_features[st]]
            teacher = [frame_vectors(z) for z in teacher_features[st]]
            loss, alpha_time, alpha_freq = self.intra[st](student, teacher, teacher)
            self._log(SET_NAMES[st], loss, alpha_time, alpha_freq, parts)
            total = total + loss
            reps_student.append(self.student_fusion[st](_fusion_order(st, student_features[st])))
            reps_teacher.append(self.teacher_fusion[st](_fusion_order(st, teacher_features[st])))
        teacher_reps = [frame_vectors(z) for z in reps_teacher]
        loss, alpha_time, alpha_freq = self.inter([frame_vectors(z) for z in reps_student], teacher_reps,
                                                  [z.detach() for z in teacher_reps])
        self._log("inter", loss, alpha_time, alpha_freq, parts)
        return total + loss, parts

    def _pool(self, feature: torch.Tensor) -> torch.Tensor:
        """Average ``pool`` frames into one (selib extension for time-domain models, whose encoder frame
        rate, e.g. 2000 frames/s, would make T x T relations and T-sized MLPs huge)."""
        if self.pool == 1:
            return feature
        return F.avg_pool2d(feature, kernel_size=(self.pool, 1), stride=(self.pool, 1), ceil_mode=True)

    def _log(self, name: str, loss, alpha_time, alpha_freq, parts: dict) -> None:
        parts[name] = float(loss.detach())
        for stream, alpha in (("time", alpha_time), ("freq", alpha_freq)):
            mean = alpha.detach().mean(dim=(0, 1)).cpu()
            self.last_alpha[f"{name}_{stream}"] = mean
            for i in range(mean.shape[0]):
                for j in range(mean.shape[1]):
                    parts[f"alpha_{name}_{stream}_s{i}t{j}"] = float(mean[i, j])


@torch.no_grad()
def feature_shapes(model: nn.Module, batch_size: int, segment_samples: int) -> dict:
    """Shapes ``{stage: [(C, T, F), ...]}`` of a model's features, from a dry forward pass on zeros
    ``[batch_size, segment_samples]`` (in eval mode; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        zeros = torch.zeros(batch_size, segment_samples, device=param.device if param is not None else "cpu")
        out = model(zeros, return_features=True)
    finally:
        model.train(was_training)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise ValueError(f"I²S-TFCKD: {type(model).__name__}(noisy, return_features=True) must return "
                         f"(enhanced, features dict); it returned {type(out).__name__}")
    features = out[1]
    missing = [st for st in STAGES if not features.get(st)]
    if missing:
        raise ValueError(f"I²S-TFCKD: {type(model).__name__} returns no features for {missing}; every set in "
                         f"{list(STAGES)} needs at least one [B, C, T, F] tensor")
    return {st: [tuple(z.shape[1:]) for z in features[st]] for st in STAGES}


def from_models(student: nn.Module, teacher: nn.Module, batch_size: int, segment_samples: int,
                **options) -> I2STFCKD:
    """Build :class:`I2STFCKD` for a student/teacher pair at a fixed ``(batch_size, segment_samples)``."""
    return I2STFCKD(feature_shapes(student, batch_size, segment_samples),
                    feature_shapes(teacher, batch_size, segment_samples), batch_size,
                    segment_samples=segment_samples, **options)
