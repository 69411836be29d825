"""Generic contract tests over every model family and preset in ``selib.models.FAMILIES``."""
import pytest
import torch

from selib.models import FAMILIES, STAGES, SEModel, build, presets
from selib.profile import count_macs

REQUIRED = ("paper-teacher", "paper-student", "tiny-teacher", "tiny-student")
TIME_DOMAIN = ("convtasnet", "dptnet")
RATE = 16000


def _cases():
    """Every preset of every family; a family that fails to import fails here, it is not skipped."""
    for family in FAMILIES:
        for preset in presets(family):
            yield pytest.param(family, preset, id=f"{family}-{preset}")


CASES = list(_cases())


def _model(family, preset, seed=0):
    torch.manual_seed(seed)
    return build(family, preset)


def _noisy(batch, length, seed=0):
    """Speech-like test input: a few harmonics with a slow envelope, plus white noise."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / RATE
    f0 = 120 + 80 * torch.rand(batch, 1, generator=g)
    harmonics = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in range(1, 6))
    clean = 0.1 * harmonics * (0.5 + 0.4 * torch.sin(6 * t))
    return clean + 0.05 * torch.randn(batch, length, generator=g), clean


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_has_the_required_presets(family):
    assert set(REQUIRED) <= set(presets(family))


@pytest.mark.parametrize("family, preset", CASES)
def test_interface_attributes(family, preset):
    model = _model(family, preset)
    assert isinstance(model, SEModel)
    assert (model.family, model.preset, model.sample_rate) == (family, preset, RATE)
    assert isinstance(model.causal, bool)
    assert model.lookahead is None if not model.causal else model.lookahead >= 0
    assert model.n_params == sum(p.numel() for p in model.parameters()) > 0


# docs/models.md#preset-summary: parameter counts of the paper presets, asserted within 1 %.
SPEC_PARAMS = {
    ("dccrn", "paper-teacher"): (3_671_053 * 0.99, 3_671_053 * 1.01),
    ("dccrn", "paper-e"): (3_742_349 * 0.99, 3_742_349 * 1.01),
    ("dccrn", "paper-r"): (3_742_349 * 0.99, 3_742_349 * 1.01),
    ("dccrn", "paper-c"): (3_742_349 * 0.99, 3_742_349 * 1.01),
    ("convtasnet", "paper-teacher"): (4_918_833 * 0.99, 4_918_833 * 1.01),
    ("convtasnet", "paper-causal"): (4_918_833 * 0.99, 4_918_833 * 1.01),
    ("dptnet", "paper-teacher"): (2.69e6 * 0.99, 2_834_945 * 1.01),
    ("dpdcrn", "paper-teacher"): (3_218_118 * 0.99, 3_218_118 * 1.01),
    ("dpdcrn", "paper-student"): (0.595e6 * 0.99, 0.595e6 * 1.01),
}


@pytest.mark.parametrize("family, preset", list(SPEC_PARAMS))
def test_paper_parameter_counts(family, preset):
    low, high = SPEC_PARAMS[family, preset]
    assert low <= _model(family, preset).n_params <= high


def _lengths(preset):
    """(batch, samples): one sample, short odd inputs, and for the tiny presets 0.5 s and 10 s."""
    if preset.startswith("tiny"):
        return [(1, 1), (3, 99), (2, RATE // 2 + 1), (1, 10 * RATE + 1), (1, 803)]
    return [(1, 1), (1, RATE // 10 + 1), (2, 803)]


@pytest.mark.parametrize("family, preset", CASES)
def test_output_has_the_input_length(family, preset):
    model = _model(family, preset).eval()
    for batch, length in _lengths(preset):
        noisy, _ = _noisy(batch, length)
        with torch.no_grad():
            enhanced = model(noisy)
        assert enhanced.shape == (batch, length), (batch, length)
        assert torch.isfinite(enhanced).all()


@pytest.mark.parametrize("family, preset", CASES)
def test_causal_flag_and_lookahead_are_what_the_model_does(family, preset):
    """Change the input after sample t: a causal model keeps every output up to t - lookahead, a
    non-causal one changes some output up to t (it hears the future)."""
    model = _model(family, preset).eval()
    dtype = torch.float64 if model.causal else torch.float32    # exactness needs float64, a change does not
    model = model.to(dtype)
    length = 6000 if preset.startswith("tiny") else 3200
    t = length // 2
    noisy = 0.3 * torch.randn(1, length, generator=torch.Generator().manual_seed(1), dtype=dtype)
    changed = noisy.clone()
    changed[:, t + 1:] += 1.0
    with torch.no_grad():
        before, after = model(noisy), model(changed)
    if model.causal:
        kept = t - model.lookahead + 1
        assert (before[:, :kept] - after[:, :kept]).abs().max() <= 1e-10
        assert (before[:, kept:] - after[:, kept:]).abs().max() > 1e-6     # the change does reach it
    else:
        assert model.lookahead is None
        assert (before[:, :t + 1] - after[:, :t + 1]).abs().max() > 1e-6


@pytest.mark.parametrize("family, preset", CASES)
def test_features_are_grouped_by_stage_on_one_frame_axis(family, preset):
    model = _model(family, preset).eval()
    noisy, _ = _noisy(2, 2401 if preset.startswith("tiny") else 801)
    with torch.no_grad():
        enhanced, features = model(noisy, return_features=True)
        plain = model(noisy)
    assert torch.allclose(enhanced, plain, atol=1e-6)
    assert tuple(features) == STAGES
    shapes = [f.shape for stage in STAGES for f in features[stage]]
    assert all(len(features[stage]) >= 1 for stage in STAGES)
    assert all(len(s) == 4 and s[0] == 2 and s[1] >= 1 for s in shapes)
    assert len({s[2] for s in shapes}) == 1, shapes  # one shared frame axis T'
    if family in TIME_DOMAIN:
        assert all(s[3] == 1 for s in shapes)


def _neg_si_snr(est, ref, eps=1e-8):
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    target = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps) * ref
    ratio = target.pow(2).sum(-1) / ((est - target).pow(2).sum(-1) + eps)
    return -(10 * torch.log10(ratio + eps)).mean()


@pytest.mark.parametrize("family, preset", CASES)
def test_a_few_adam_steps_reduce_the_loss(family, preset):
    model = _model(family, preset).train()
    tiny = preset.startswith("tiny")
    noisy, clean = _noisy(2, 4000 if tiny else 800)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3 if tiny else 2):
        loss = _neg_si_snr(model(noisy), clean)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        losses.append(_neg_si_snr(model(noisy), clean).item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("family, band", [
    ("dccrn", (0.15, 0.30)), ("convtasnet", (0.15, 0.30)), ("dptnet", (0.15, 0.30)),
    ("dpdcrn", (0.10, 0.30)),  # the authors' pair, about 0.18 as published
])
def test_paper_student_teacher_mac_ratio(family, band):
    noisy, _ = _noisy(1, RATE // 4)
    macs = [count_macs(_model(family, p).eval(), noisy) for p in ("paper-student", "paper-teacher")]
    assert band[0] <= macs[0] / macs[1] <= band[1], macs
