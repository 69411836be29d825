"""DPTNet: the author configuration's size, the improved transformer layer, non-causality."""
import pytest
import torch
from torch.nn import functional as F

from selib.models import build
from selib.models.dptnet import ImprovedTransformer

# The author's 2-speaker model has 2,834,945 parameters (ujscjj/DPTNet issue #2, element count); the
# 1-source head's output 1x1 Conv2d has 64 instead of 128 output channels: 64 * 64 + 64 fewer.
AUTHOR_2SPK = 2_834_945
HEAD_DIFFERENCE = 64 * 64 + 64


def test_paper_teacher_size_matches_the_author_configuration():
    n = build("dptnet", "paper-teacher").n_params
    assert 2.69e6 * 0.99 <= n <= AUTHOR_2SPK * 1.01
    assert n == AUTHOR_2SPK - HEAD_DIFFERENCE


def closed_form_params(enc, feat, hidden, layers, window):
    attention = 3 * feat * feat + 3 * feat + feat * feat + feat
    lstm = 2 * (4 * hidden * (feat + hidden) + 8 * hidden)
    layer = attention + lstm + (2 * hidden * feat + feat) + 4 * feat
    return (2 * enc * window + 2 * enc + enc * feat + 2 * layers * layer + 1 + (feat * feat + feat)
            + 2 * (feat * feat + feat) + feat * enc)


@pytest.mark.parametrize("preset, sizes", [
    ("paper-teacher", (256, 64, 128, 6, 2)),
    ("paper-student", (128, 32, 64, 6, 2)),
    ("tiny-teacher", (64, 32, 64, 2, 16)),
    ("tiny-student", (32, 16, 32, 2, 16)),
])
def test_preset_sizes(preset, sizes):
    assert build("dptnet", preset).n_params == closed_form_params(*sizes)


def test_improved_transformer_against_a_direct_computation():
    torch.manual_seed(0)
    layer = ImprovedTransformer(8, 6, heads=2).eval()
    x = torch.randn(3, 5, 8)
    # Attention written out from the layer's weights (2 heads of width 4), then post-norm and BiLSTM FFN.
    q, k, v = F.linear(x, layer.attention.in_proj_weight, layer.attention.in_proj_bias).chunk(3, dim=-1)
    heads = [torch.softmax(q[..., h:h + 4] @ k[..., h:h + 4].transpose(1, 2) / 2.0, dim=-1) @ v[..., h:h + 4]
             for h in (0, 4)]
    attended = layer.attention.out_proj(torch.cat(heads, dim=-1))
    y = F.layer_norm(x + attended, (8,), layer.norm1.weight, layer.norm1.bias)
    expected = F.layer_norm(y + layer.linear(torch.relu(layer.lstm(y)[0])), (8,), layer.norm2.weight,
                            layer.norm2.bias)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        ImprovedTransformer(10, 6, heads=4)


def test_features_follow_the_dual_path_layers():
    model = build("dptnet", "tiny-student")
    x = torch.randn(2, 1234)
    enhanced, feats = model(x, return_features=True)
    frames = model.codec.frames(1234)
    assert [f.shape for f in feats["encoder"]] == [(2, 32, frames, 1), (2, 16, frames, 1)]
    assert [f.shape for f in feats["middle"]] == [(2, 16, frames, 1)] * 2
    assert [f.shape for f in feats["decoder"]] == [(2, 32, frames, 1)] * 2
    mask, masked = (f[..., 0] for f in feats["decoder"])
    assert torch.allclose(masked, mask * feats["encoder"][0][..., 0])
    assert (mask >= 0).all()  # the author's ReLU mask
