"""Unit tests of selib.kd: logit baselines, the Frequency Adapter, DFKD and I²S-TFCKD.

References are independent: a numpy STFT and numpy re-implementations of the definitions in docs/kd.md
("Frequency Adapter", "DFKD loss", "I²S-TFCKD"), hand-built spectra with known answers, and identities.
"""
import numpy as np
import pytest
import scipy.signal
import torch

from selib import kd
from selib.audio import STFT
from selib.kd.adapter import FrequencyAdapter
from selib.kd.dfkd import DFKDLoss, cosine_distance
from selib.kd.tfc import (I2STFCKD, ResidualFusion, TFCalibration, frame_vectors, jeffreys, relation_freq,
                          relation_time)
from selib.models import build as build_model
import reference  # tests/helpers: independent numpy references

SR, N_FFT, HOP = 16000, 512, 128


def np_stft(x: np.ndarray) -> np.ndarray:
    """The reference STFT [B, F, T] (512-point, hop 128) of one signal or a batch."""
    return reference.stft(np.atleast_2d(x), N_FFT, HOP)


def np_max_slope(mag: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """docs/kd.md#frequency-adapter: running max from DC, relative first difference, first argmax; per frame."""
    b, f, t = mag.shape
    out = np.zeros((b, t), dtype=int)
    for i in range(b):
        for n in range(t):
            run = np.maximum.accumulate(mag[i, :, n])
            slope = [(run[k + 1] - run[k]) / (run[k] + eps) for k in range(f - 1)]
            out[i, n] = int(np.argmax(slope))
    return out


def np_energy(mag: np.ndarray, rho: float = 0.9) -> np.ndarray:
    """docs/kd.md#frequency-adapter, rule "energy": smallest f whose cumulative energy share reaches rho;
    silent frames -> 0."""
    b, f, t = mag.shape
    out = np.zeros((b, t), dtype=int)
    for i in range(b):
        for n in range(t):
            energy = mag[i, :, n] ** 2
            total = energy.sum()
            if total > 0:
                out[i, n] = next(k for k in range(f) if energy[:k + 1].sum() / total >= rho)
    return out


def lowpassed_noise(seconds=0.5, cutoff=2000.0, seed=0):
    rng = np.random.default_rng(seed)
    sos = scipy.signal.butter(12, cutoff, fs=SR, output="sos")
    return scipy.signal.sosfilt(sos, rng.standard_normal((2, int(SR * seconds)))).astype(np.float32)


# ---------------------------------------------------------------- Frequency Adapter


@pytest.mark.parametrize("rule", ["max-slope", "energy", "fixed"])
def test_adapter_masks_cover_every_bin_and_share_the_split_bin(rule):
    spec = STFT()(torch.randn(3, 8000))
    low, high, split = FrequencyAdapter(rule)(spec)
    assert low.shape == high.shape == spec.shape and split.shape == (3, spec.shape[2])
    assert bool((low | high).all())
    overlap = (low & high).nonzero()
    assert overlap.shape[0] == split.numel()  # exactly one shared bin per frame ...
    assert torch.equal(overlap[:, 1], split[overlap[:, 0], overlap[:, 2]])  # ... and it is m_n


def test_adapter_rules_on_known_spectra():
    mag = np.zeros((1, 257, 4))
    mag[0, :20, 0], mag[0, 20:, 0] = 0.1, 1.0           # one jump of the running max, at f=19 -> 20
    mag[0, :, 1] = 1.0
    mag[0, 10, 1] = mag[0, 30, 1] = 2.0                 # equal relative jumps at f=9 and f=29 -> lowest
    mag[0, :50, 2] = 1.0                                # flat up to bin 49: 90 % of energy at bin 44
    # frame 3 is silent
    spec = torch.from_numpy(mag)
    slope = FrequencyAdapter("max-slope").split_bins(spec)[0].tolist()
    energy = FrequencyAdapter("energy", rho=0.9).split_bins(spec)[0].tolist()
    assert slope == [19, 9, 0, 0]
    assert energy[2] == 44 and energy[3] == 0
    assert FrequencyAdapter("fixed").split_bins(spec)[0].tolist() == [32] * 4  # round(1000*512/16000)
    assert FrequencyAdapter("fixed", cutoff_hz=4000).split_bins(spec)[0].tolist() == [128] * 4


def test_adapter_matches_the_definitions_on_lowpassed_noise():
    wav = lowpassed_noise()
    mag = np.abs(np_stft(wav))
    spec = torch.from_numpy(mag)
    energy = FrequencyAdapter("energy").split_bins(spec).numpy()
    np.testing.assert_array_equal(energy, np_energy(mag))
    np.testing.assert_array_equal(FrequencyAdapter("max-slope").split_bins(spec).numpy(), np_max_slope(mag))
    inner = energy[:, 2:-2]  # frames away from the zero-padded edges
    assert (inner < 2000 / (SR / N_FFT)).all()  # 90 % of a 2 kHz low-passed noise lies below 2 kHz
    # the adapter on the library STFT of the same signal agrees with the numpy STFT
    lib_spec = STFT()(torch.from_numpy(wav))
    np.testing.assert_allclose(lib_spec.abs().numpy(), mag, rtol=1e-3, atol=1e-3)


def test_adapter_energy_rule_puts_90_percent_below_a_known_bin():
    # two on-bin tones: 90 % of the energy at bin 40, 10 % at bin 100 -> split at the top of the bin-40 lobe
    t = np.arange(SR // 2) / SR
    k_low, k_high = 40, 100
    wav = (np.sqrt(0.9) * np.sin(2 * np.pi * k_low * SR / N_FFT * t)
           + np.sqrt(0.1) * np.sin(2 * np.pi * k_high * SR / N_FFT * t)).astype(np.float32)
    mag = np.abs(np_stft(wav))
    split = FrequencyAdapter("energy").split_bins(torch.from_numpy(mag)).numpy()
    np.testing.assert_array_equal(split, np_energy(mag))
    full = slice(2, STFT().frames(len(wav)) - 3)  # frames whose window lies wholly inside the signal
    assert (split[0, full] == k_low + 1).all()  # the Hann main lobe of the bin-40 tone ends at bin 41


def test_adapter_rejects_bad_settings():
    with pytest.raises(ValueError, match="max-slope"):
        FrequencyAdapter("median")
    with pytest.raises(ValueError, match="rho"):
        FrequencyAdapter("energy", rho=1.5)
    with pytest.raises(ValueError, match="257 bins"):
        FrequencyAdapter()(torch.ones(1, 129, 3))


# ---------------------------------------------------------------- DFKD


def test_cosine_distance_matches_real_vector_cosine():
    a, b = torch.randn(2, 20, 5, dtype=torch.complex64), torch.randn(2, 20, 5, dtype=torch.complex64)
    va = np.concatenate([a.real.numpy(), a.imag.numpy()], axis=1)
    vb = np.concatenate([b.real.numpy(), b.imag.numpy()], axis=1)
    ref = 1 - (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    np.testing.assert_allclose(cosine_distance(a, b).numpy(), ref, rtol=1e-4, atol=1e-5)
    assert float(cosine_distance(a, a).abs().max()) < 1e-5
    assert float(cosine_distance(a, -a).min()) > 1.99


def test_dfkd_loss_matches_a_numpy_reference():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 4000), torch.randn(2, 4000)
    loss, parts = DFKDLoss(rule="fixed", beta=0.3)(student, teacher)
    t, s = np_stft(teacher.numpy()), np_stft(student.numpy())
    bins = np.arange(t.shape[1])[None, :, None]
    low, high = bins <= 32, bins >= 32

    def cos_dist(x, y):
        dot = (x.real * y.real + x.imag * y.imag).sum(1)
        return 1 - dot / (np.sqrt((np.abs(x) ** 2).sum(1)) * np.sqrt((np.abs(y) ** 2).sum(1)))

    ref_low = cos_dist(t * low, s * low).mean()
    ref_high = 0.3 * cos_dist(t * high, s * high).mean() + 0.7 * (((np.abs(t) - np.abs(s)) * high) ** 2).mean()
    assert parts["low"] == pytest.approx(ref_low, rel=1e-4)
    assert parts["high"] == pytest.approx(ref_high, rel=1e-3)
    assert float(loss) == pytest.approx(ref_low + ref_high, rel=1e-3)
    assert parts["split_hz_mean"] == pytest.approx(1000.0)


@pytest.mark.parametrize("rule", ["max-slope", "energy", "fixed"])
def test_dfkd_zero_for_identical_outputs_and_positive_otherwise(rule):
    torch.manual_seed(1)
    teacher = torch.from_numpy(lowpassed_noise(0.25)) + 0.01 * torch.randn(2, 4000)
    loss_same, _ = DFKDLoss(rule=rule)(teacher.clone(), teacher)
    loss_diff, parts = DFKDLoss(rule=rule)(teacher + 0.5 * torch.randn_like(teacher), teacher)
    assert abs(float(loss_same)) < 1e-5
    assert parts["low"] > 0 and parts["high"] > 0 and float(loss_diff) > 1e-3


@pytest.mark.parametrize("options", [{}, {"spectrum": "magnitude"}, {"frame_weighting": "energy"}])
def test_dfkd_gradient_matches_finite_differences(options):
    """The band losses are formed from shared per-bin products; their autograd gradient must be the
    derivative of the loss: checked along random directions with central differences in float64."""
    torch.manual_seed(5)
    distill = DFKDLoss(**options)
    teacher = torch.randn(2, 4000, dtype=torch.float64)
    student = (teacher + 0.5 * torch.randn_like(teacher)).requires_grad_()
    loss = lambda x: float(distill(x, teacher)[0])  # noqa: E731
    distill(student, teacher)[0].backward()
    h = 1e-5
    for _ in range(3):
        direction = torch.randn_like(teacher)
        numeric = (loss(student.detach() + h * direction) - loss(student.detach() - h * direction)) / (2 * h)
        assert float((student.grad * direction).sum()) == pytest.approx(numeric, rel=1e-5)


# ---------------------------------------------------------------- logit baselines and build()


def test_logit_baselines_match_references_and_vanish_for_identical_outputs():
    torch.manual_seed(2)
    student, teacher, clean = torch.randn(2, 4000), torch.randn(2, 4000), torch.randn(2, 4000)
    kd_of = lambda method, s: kd.build(method, teacher=torch.nn.Identity(), se_loss="sisnr")(  # noqa: E731
        s, clean, clean, teacher)[1]["kd"]
    s, t = student.numpy().astype(np.float64), teacher.numpy().astype(np.float64)
    assert kd_of("logits-mse", student) == pytest.approx(((s - t) ** 2).mean(), rel=1e-5)
    assert kd_of("logits-mse", teacher) == 0.0
    spec_ref = ((np.abs(np_stft(s)) - np.abs(np_stft(t))) ** 2).mean()
    assert kd_of("logits-spec", student) == pytest.approx(spec_ref, rel=1e-3)
    assert kd_of("logits-spec", teacher) == pytest.approx(0.0, abs=1e-8)
    assert kd_of("logits-sisnr", student) == pytest.approx(-reference.si_sdr(s, t).mean(), rel=1e-3)
    assert kd_of("logits-sisnr", teacher) < -50 < kd_of("logits-sisnr", student)  # minimum at identity


def test_distiller_total_is_se_plus_weighted_kd_and_teacher_gets_no_gradient():
    torch.manual_seed(3)
    student = torch.randn(2, 4000, requires_grad=True)
    teacher = torch.randn(2, 4000, requires_grad=True)  # as if computed with grad: must be detached
    clean = torch.randn(2, 4000)
    distiller = kd.build("dfkd", teacher=torch.nn.Identity(), weight=2.5)
    loss, parts = distiller(student, clean, clean, teacher)
    assert float(loss.detach()) == pytest.approx(parts["se"] + 2.5 * parts["kd"], rel=1e-5)
    assert parts["kd"] == pytest.approx(parts["low"] + parts["high"], rel=1e-5)
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None
    assert distiller.last_split_hz.shape == (2 * STFT().frames(4000),)
    none_loss, none_parts = kd.build("none")(student, clean, clean)
    assert set(none_parts) == {"se"} and float(none_loss.detach()) == pytest.approx(parts["se"], rel=1e-6)


def test_build_rejects_bad_methods_options_and_missing_inputs():
    with pytest.raises(ValueError, match="logits-mse"):
        kd.build("logits-l1", teacher=torch.nn.Identity())
    with pytest.raises(ValueError, match="rule"):
        kd.build("dfkd", teacher=torch.nn.Identity(), options={"cut": 3})
    with pytest.raises(ValueError, match="i2s_weight=-1"):
        kd.build("dfkd+i2s-tfckd", teacher=torch.nn.Identity(), options={"i2s_weight": -1})
    with pytest.raises(ValueError, match="needs a teacher"):
        kd.build("dfkd")
    with pytest.raises(ValueError, match="batch_size"):
        kd.build("i2s-tfckd", torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(ValueError, match="teacher_out"):
        kd.build("logits-mse", teacher=torch.nn.Identity())(torch.zeros(1, 100), torch.ones(1, 100))


# ---------------------------------------------------------------- I²S-TFCKD building blocks


def test_relations_are_row_stochastic_and_match_numpy():
    x = torch.randn(3, 7, 11)
    p_time, p_freq = relation_time(x), relation_freq(x)
    assert torch.allclose(p_time.sum(-1), torch.ones(3, 7)) and torch.allclose(p_freq.sum(-1), torch.ones(3, 7))
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=-1, keepdims=True)
    ref_time = (1 + np.einsum("btd,bsd->bts", xn, xn)) / 2
    ref_freq = (1 + np.einsum("btd,ctd->btc", xn, xn)) / 2
    np.testing.assert_allclose(p_time.numpy(), ref_time / ref_time.sum(-1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(p_freq.numpy(), ref_freq / ref_freq.sum(-1, keepdims=True), atol=1e-5)


def test_jeffreys_is_symmetric_nonnegative_and_zero_on_equal_inputs():
    p, q = relation_time(torch.randn(2, 5, 4)), relation_time(torch.randn(2, 5, 4))
    assert torch.allclose(jeffreys(p, q), jeffreys(q, p))
    assert float(jeffreys(p, q).min()) >= 0 and float(jeffreys(p, q).sum()) > 0
    assert float(jeffreys(p, p).abs().max()) == 0.0


@torch.no_grad()
def test_calibration_weights_are_a_softmax_over_teacher_layers():
    torch.manual_seed(4)
    calib = TFCalibration(n_student=2, n_teacher=3, batch_size=4, frames=6)
    student = [torch.randn(4, 6, d) for d in (5, 9)]
    teacher = [torch.randn(4, 6, d) for d in (5, 7, 3)]
    loss, alpha_time, alpha_freq = calib(student, teacher, teacher)
    for alpha in (alpha_time, alpha_freq):
        assert alpha.shape == (4, 6, 2, 3) and float(alpha.detach().min()) >= 0
        assert torch.allclose(alpha.sum(-1), torch.ones(4, 6, 2))
    assert float(loss) > 0
    # identical student and teacher layers: off-diagonal pairs still differ, a single pair does not
    same, _, _ = TFCalibration(2, 2, 4, 6)(teacher[:2], teacher[:2], teacher[:2])
    one, _, _ = TFCalibration(1, 1, 4, 6)(teacher[:1], teacher[:1], teacher[:1])
    assert float(same) > 0 and float(one) == 0.0


@torch.no_grad()
def test_calibrated_loss_matches_the_written_sum():
    torch.manual_seed(5)
    calib = TFCalibration(n_student=2, n_teacher=2, batch_size=3, frames=4)
    student = [torch.randn(3, 4, 6) for _ in range(2)]
    teacher = [torch.randn(3, 4, 5) for _ in range(2)]
    loss, a_time, a_freq = calib(student, teacher, teacher)
    ref = 0.0
    for i in range(2):
        for j in range(2):
            jt = jeffreys(relation_time(teacher[j]), relation_time(student[i]))  # [B, T, T]
            jf = jeffreys(relation_freq(teacher[j]), relation_freq(student[i]))  # [B, T, B]
            ref += (a_time[:, :, i, j, None] * jt).sum(1).mean() + (a_freq[:, :, i, j, None] * jf).sum(1).mean()
    assert float(loss) == pytest.approx(float(ref) / 2, rel=1e-5)


def test_residual_fusion_ends_at_the_last_layer_shape():
    fusion = ResidualFusion([2, 8, 6], mid_channels=16)
    out = fusion([torch.randn(2, 2, 5, 257), torch.randn(2, 8, 5, 129), torch.randn(2, 6, 5, 64)])
    assert out.shape == (2, 6, 5, 64)
    assert sum(p.numel() for p in fusion.parameters()) == (
        (2 + 8 + 6) * 16 + 3 * (16 + 16 + 16)  # 1x1 input convs (no bias), IN affine, PReLU
        + 2 * (2 * 16 * 2 + 2)  # gate convs with bias
        + 16 * 6 * 9 + 6 + 6 + 6)  # 3x3 output conv, IN affine, PReLU


def synthetic_features(batch, frames, channels, seed, requires_grad=False, layers=2):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"encoder": [(channels, 9), (channels, 5)][:layers], "middle": [(channels, 5)],
              "decoder": [(channels, 5), (2, 17)][:layers]}
    return {st: [torch.randn(batch, c, frames, f, generator=gen).requires_grad_(requires_grad) for c, f in v]
            for st, v in shapes.items()}


def shapes_of(features):
    return {st: [tuple(z.shape[1:]) for z in v] for st, v in features.items()}


@torch.no_grad()
def test_i2s_is_zero_for_identical_features_and_positive_otherwise():
    # one layer per set: all-pairs matching then has only the matching pair, so identical features give 0
    feats = synthetic_features(4, 6, 3, seed=0, layers=1)
    module = I2STFCKD(shapes_of(feats), shapes_of(feats), batch_size=4, mid_channels=8)
    module.teacher_fusion.load_state_dict(module.student_fusion.state_dict())  # same fusion on both sides
    loss, parts = module(torch.zeros(4, 1), None, feats, feats)
    assert parts["enc"] == parts["mid"] == parts["dec"] == 0.0
    # the inter-set block pairs every representative with every other: with identical sides only the
    # off-diagonal (different-set) pairs contribute, so it equals the same block fed the reps directly
    reps = [frame_vectors(module.student_fusion[st](fs[::-1] if st == "decoder" else fs))
            for st, fs in feats.items()]
    inter, _, _ = module.inter(reps, reps, reps)
    assert parts["inter"] == pytest.approx(float(inter), rel=1e-6) and float(loss) == pytest.approx(float(inter))
    other = synthetic_features(4, 6, 3, seed=1, layers=1)
    loss, parts = module(torch.zeros(4, 1), None, other, feats)
    assert all(parts[k] > 0 for k in ("enc", "mid", "dec", "inter"))
    assert float(loss) == pytest.approx(sum(parts[k] for k in ("enc", "mid", "dec", "inter")), rel=1e-5)


def test_i2s_gradient_paths():
    student = synthetic_features(4, 6, 3, seed=2, requires_grad=True)
    teacher = synthetic_features(4, 6, 5, seed=3, requires_grad=True)
    module = I2STFCKD(shapes_of(student), shapes_of(teacher), batch_size=4, mid_channels=8)
    loss, _ = module(torch.zeros(4, 1), None, student, teacher)
    loss.backward()
    assert all(z.grad is not None and float(z.grad.abs().sum()) > 0 for v in student.values() for z in v)
    assert all(z.grad is None for v in teacher.values() for z in v)
    for name, block in [("student_fusion", module.student_fusion), ("teacher_fusion", module.teacher_fusion),
                        ("intra", module.intra), ("inter", module.inter)]:
        grads = [p.grad for p in block.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name
    # intra key MLPs see detached teacher features, the inter key MLPs the teacher's fused features
    assert float(module.intra["encoder"].key_time[0].net[0].weight.grad.abs().sum()) > 0


def test_i2s_on_real_models_rejects_other_batch_shapes_and_keeps_the_teacher_untouched():
    torch.manual_seed(6)
    student, teacher = build_model("dpdcrn", "tiny-student"), build_model("dpdcrn", "tiny-teacher")
    distiller = kd.build("i2s-tfckd", student, teacher, batch_size=2, segment_samples=2048,
                         options={"mid_channels": 8})
    assert distiller.needs_features
    noisy, clean = torch.randn(2, 2048), torch.randn(2, 2048)
    teacher_out, teacher_feats = teacher(noisy, return_features=True)  # with grad on purpose
    out, feats = student(noisy, return_features=True)
    loss, parts = distiller(out, clean, noisy, teacher_out, feats, teacher_feats)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert {"se", "kd", "enc", "mid", "dec", "inter", "alpha_mid_time_s0t0"} <= set(parts)
    assert teacher_out.requires_grad  # ... yet the distiller's detach kept it out of the graph
    with pytest.raises(ValueError, match=r"B=2 segments of T=2048 samples, but received B=1, T=2048"):
        distiller(out[:1], clean[:1], noisy[:1], teacher_out[:1], {k: [z[:1] for z in v] for k, v in feats.items()},
                  teacher_feats)
    with pytest.raises(ValueError, match=r"received B=2, T=1024"):
        distiller(out[:, :1024], clean[:, :1024], noisy[:, :1024], teacher_out[:, :1024], feats, teacher_feats)


@torch.no_grad()
def test_i2s_pools_long_frame_axes_and_combination_adds_both_losses():
    student, teacher = build_model("convtasnet", "tiny-student"), build_model("convtasnet", "tiny-teacher")
    distiller = kd.build("dfkd+i2s-tfckd", student, teacher, batch_size=2, segment_samples=1600,
                         options={"mid_channels": 8, "max_frames": 64, "dfkd_weight": 0.5, "i2s_weight": 2.0})
    i2s = distiller.terms["i2s"]
    assert i2s.raw_frames == 201 and i2s.pool == 4 and i2s.frames == 51  # ceil(201 / 4)
    noisy = torch.randn(2, 1600)
    with torch.no_grad():
        teacher_out, teacher_feats = teacher(noisy, return_features=True)
    out, feats = student(noisy, return_features=True)
    loss, parts = distiller(out, noisy, noisy, teacher_out, feats, teacher_feats)
    assert parts["kd"] == pytest.approx(0.5 * parts["dfkd"] + 2.0 * parts["i2s"], rel=1e-5)
    assert parts["dfkd"] == pytest.approx(parts["low"] + parts["high"], rel=1e-5)
    assert float(loss) == pytest.approx(parts["se"] + parts["kd"], rel=1e-5)
    assert frame_vectors(feats["encoder"][0]).shape == (2, 201, feats["encoder"][0].shape[1])


def test_dfkd_ablation_switches_match_a_numpy_reference():
    """``spectrum="magnitude"``: cosines on |T|, |S|; ``frame_weighting="energy"``: per-utterance frame
    means weighted by the teacher's band energy share (docs/kd.md#dfkd-ablations)."""
    torch.manual_seed(4)
    teacher, student = torch.randn(2, 4000), torch.randn(2, 4000)
    _, parts = DFKDLoss(rule="fixed", beta=1.0, spectrum="magnitude", frame_weighting="energy")(student, teacher)
    t, s = np_stft(teacher.numpy()), np_stft(student.numpy())
    bins = np.arange(t.shape[1])[None, :, None]

    def weighted_cos(band):
        x, y = np.abs(t) * band, np.abs(s) * band
        dist = 1 - (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        energy = (x ** 2).sum(1)
        return ((energy / energy.sum(1, keepdims=True)) * dist).sum(1).mean()

    assert parts["low"] == pytest.approx(weighted_cos(bins <= 32), rel=1e-4)
    assert parts["high"] == pytest.approx(weighted_cos(bins >= 32), rel=1e-4)
    # magnitudes ignore phase: a phase-flipped student is perfect for "magnitude", not for "complex"
    flipped = -teacher
    assert float(DFKDLoss(rule="fixed", spectrum="magnitude")(flipped, teacher)[0]) < 1e-4
    assert float(DFKDLoss(rule="fixed")(flipped, teacher)[0]) > 1.5
    with pytest.raises(ValueError, match="frame_weighting"):
        DFKDLoss(frame_weighting="loud")


def test_dfkd_gap_mask_matches_a_numpy_reference():
    """Knowledge-gap mask (docs/kd.md#knowledge-gap-mask): a band of a frame is distilled only where the
    teacher's squared spectral error against the clean reference is below the student's."""
    torch.manual_seed(6)
    clean = torch.randn(2, 4000)
    teacher = clean + 0.3 * torch.randn(2, 4000)
    student = clean + 0.3 * torch.randn(2, 4000) * torch.linspace(0, 2, 4000)   # worse late, better early
    _, parts = DFKDLoss(rule="fixed", beta=0.4, gap_mask=True)(student, teacher, clean=clean)
    t, s, c = (np_stft(x.numpy()) for x in (teacher, student, clean))
    bins = np.arange(t.shape[1])[None, :, None]

    def masked(band):
        gap = ((np.abs(t - c) ** 2 * band).sum(1) < (np.abs(s - c) ** 2 * band).sum(1)).astype(float)
        x, y = t * band, s * band
        dist = 1 - (x.real * y.real + x.imag * y.imag).sum(1) / (np.linalg.norm(np.abs(x), axis=1)
                                                                 * np.linalg.norm(np.abs(y), axis=1))
        return gap, (gap * dist).mean()

    gap_low, ref_low = masked(bins <= 32)
    gap_high, cos_high = masked(bins >= 32)
    mse_high = (((np.abs(t) - np.abs(s)) * (bins >= 32) * gap_high[:, None, :]) ** 2).mean()
    assert 0.05 < gap_low.mean() < 0.95 and 0.05 < gap_high.mean() < 0.95   # the mask is not trivial here
    assert parts["low"] == pytest.approx(ref_low, rel=1e-4)
    assert parts["high"] == pytest.approx(0.4 * cos_high + 0.6 * mse_high, rel=1e-3)
    assert parts["gap_share"] == pytest.approx((gap_low.mean() + gap_high.mean()) / 2, abs=1e-6)


def test_dfkd_gap_mask_through_the_distiller_spares_rows_without_reference():
    torch.manual_seed(7)
    clean = torch.randn(2, 4000)
    teacher, student = clean + 0.01 * torch.randn(2, 4000), clean + 2.0 * torch.randn(2, 4000)
    distiller = kd.build("dfkd", teacher=torch.nn.Identity(), options={"gap_mask": True})
    # the teacher is better everywhere: the mask keeps every frame, as without the mask
    with_mask = distiller.split(student, clean, teacher_out=teacher)[1]
    plain = kd.build("dfkd", teacher=torch.nn.Identity()).split(student, clean, teacher_out=teacher)[1]
    assert float(with_mask) == pytest.approx(float(plain), rel=1e-5)
    # a student better than the teacher is not distilled, except on a row with no reference
    labelled = torch.tensor([True, False])
    _, kd_loss, parts = distiller.split(teacher, clean, teacher_out=student, labelled=labelled)
    alone = DFKDLoss(gap_mask=True)(teacher[1:], student[1:], clean=clean[1:], labelled=torch.tensor([False]))
    assert parts["gap_share"] == pytest.approx(0.5, abs=1e-6)
    assert float(kd_loss) == pytest.approx(float(alone[0]) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="clean"):
        DFKDLoss(gap_mask=True)(student, teacher)


def test_distiller_se_loss_sees_only_labelled_rows():
    torch.manual_seed(8)
    clean, noisy = torch.randn(4, 4000), torch.randn(4, 4000)
    student, teacher = clean + 0.2 * torch.randn(4, 4000), clean + 0.1 * torch.randn(4, 4000)
    distiller = kd.build("logits-sisnr", teacher=torch.nn.Identity())
    labelled = torch.tensor([True, True, False, False])
    garbage = clean.clone()
    garbage[2:] = torch.randn(2, 4000) * 1e3   # rows without a reference: whatever stands there is unused
    se, kd_loss, _ = distiller.split(student, garbage, noisy, teacher, labelled=labelled)
    assert float(se) == pytest.approx(-reference.si_sdr(student[:2].numpy(), clean[:2].numpy()).mean(), rel=1e-4)
    assert float(kd_loss) == pytest.approx(-reference.si_sdr(student.numpy(), teacher.numpy()).mean(), rel=1e-4)
