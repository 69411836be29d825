"""DPDCRN: sizes against the spec's derived counts, shapes, feature taps, the causal variant."""
import pytest
import torch
from torch.nn import functional as F

from selib.models import build, presets
from selib.models.blocks import CumulativeLayerNorm
from reach import future_reach  # tests/helpers

PRESETS = sorted(presets("dpdcrn"))


def closed_form_params(C, layers):
    """Per stage, written out layer by layer: conv weights + biases, instance-norm affines and
    per-channel PReLUs; attention 4 d^2 + 4 d, GRU 3 gates of hidden 2d, three LayerNorms per path."""
    d = C // 2

    def block(c_in, c_out):
        return c_in * c_out * 3 + c_out + 2 * c_out + c_out

    dense = sum(C * (i + 1) * C * 6 + C + 2 * C + C for i in range(4))
    encoder = block(2, C) + block(C, C) + dense
    decoder = dense + block(C, C) + (C * 2 * 3 + 2)

    def path(directions):
        gru = directions * (3 * 2 * d * (d + 2 * d) + 2 * 3 * 2 * d)
        return (4 * d * d + 4 * d) + gru + (2 * d * directions * d + d) + 3 * 2 * d

    middle = (C * d + d) + 1 + 2 + layers * (path(2) + path(1) + 2 * 2 * d) + 1 + (d * C + C)
    return encoder, middle, decoder


def _stage_params(model):
    return tuple(sum(p.numel() for p in part.parameters()) for part in (model.encoder, model.middle, model.decoder))


def test_closed_form_reproduces_the_spec_counts():
    assert closed_form_params(128, 4) == (1_036_032, 1_146_564, 1_035_522)
    assert [round(n / 1e6, 3) for n in closed_form_params(64, 1)] == [0.260, 0.076, 0.260]


@pytest.mark.parametrize("preset, expected", [("paper-teacher", 3_218_118), ("paper-student", 595_000)])
def test_paper_sizes(preset, expected):
    assert abs(build("dpdcrn", preset).n_params - expected) <= 0.01 * expected


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_matches_the_closed_form(preset):
    kwargs = presets("dpdcrn")[preset]
    assert _stage_params(build("dpdcrn", preset)) == closed_form_params(kwargs["channels"], kwargs["layers"])


@pytest.mark.parametrize("preset", ["tiny-teacher", "paper-student"])
def test_features_by_stage(preset):
    model = build("dpdcrn", preset).eval()
    C, layers = presets("dpdcrn")[preset]["channels"], presets("dpdcrn")[preset]["layers"]
    length = 4001
    with torch.no_grad():
        out, feats = model(torch.randn(2, length), return_features=True)
    T = model.stft.frames(length)
    assert out.shape == (2, length)
    assert [f.shape for f in feats["encoder"]] == [(2, C, T, 129), (2, C, T, 64), (2, C, T, 64)]
    assert [f.shape for f in feats["middle"]] == [(2, C, T, 64)] * layers
    assert [f.shape for f in feats["decoder"]] == [(2, C, T, 64), (2, C, T, 129), (2, 2, T, 257)]


def test_bad_input_is_rejected():
    model = build("dpdcrn", "tiny-student")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.randn(100))
    with pytest.raises(ValueError, match="heads"):
        build("dpdcrn", "tiny-student", channels=20)


@pytest.mark.parametrize("per_channel", [True, False])
def test_cumulative_norm_is_the_whole_utterance_norm_of_each_prefix(per_channel):
    """Frame t of the causal norm equals instance norm / gLN (PyTorch's own) run on frames 0..t."""
    torch.manual_seed(0)
    norm = CumulativeLayerNorm(3, 1e-5, per_channel)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    reference = (lambda z: F.instance_norm(z, eps=1e-5)) if per_channel else (lambda z: F.group_norm(z, 1, eps=1e-5))
    expected = torch.stack([reference(x[:, :, :t + 1])[:, :, t] for t in range(7)], 2)
    expected = expected * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(norm.double()(x), expected, atol=1e-10)


@pytest.mark.parametrize("preset", ["tiny-student", "paper-student"])
def test_causal_variant_has_the_same_parameters(preset):
    kwargs = presets("dpdcrn")[preset]
    assert _stage_params(build("dpdcrn", preset, causal=True)) == closed_form_params(kwargs["channels"], kwargs["layers"])


def test_causal_lookahead_is_tight():
    """Output sample n hears input n + 510 exactly when n is the first non-zero window sample of a frame
    (frames start at 256 k - 256: the centred STFT pads 256 samples on the left); never anything later."""
    torch.manual_seed(0)
    model = build("dpdcrn", "tiny-student", causal=True).double().eval()
    assert model.causal and model.lookahead == 510
    reach = future_reach(model, 4000, (1025, 1026, 1100, 2049, 2500))
    assert max(reach.values()) == reach[1025] == reach[2049] == model.lookahead
    assert reach[1026] == model.lookahead - 1 and reach[1100] == model.lookahead - 75
