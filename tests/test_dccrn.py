"""DCCRN and the complex building blocks: sizes, shapes, features, look-ahead, training, complex identities."""
import pytest
import torch
from torch.nn import functional as F

from selib.models import build, presets
from selib.models.complex import ComplexConv2d, ComplexConvTranspose2d, ComplexLSTM, apply_mask
from reach import future_reach  # tests/helpers

PRESETS = sorted(presets("dccrn"))


def closed_form_params(kernel_num, rnn_units, complex_lstm, bins=256, kernel=5 * 2):
    """The author layout counted layer by layer: two real convs per complex conv (with biases), BN
    affine + one PReLU weight per block (not after the last decoder block), two LSTM layers."""
    ch = [2, *kernel_num]
    n = sum(2 * (a // 2 * b // 2 * kernel + b // 2) + 2 * b + 1 for a, b in zip(ch[:-1], ch[1:]))
    for i in range(len(kernel_num), 0, -1):
        a, b = 2 * ch[i], ch[i - 1]
        n += 2 * (a // 2 * b // 2 * kernel + b // 2) + (2 * b + 1 if i > 1 else 0)
    feat = ch[-1] * bins // 2 ** len(kernel_num)

    def lstm(inputs, hidden):
        return 4 * hidden * (inputs + hidden) + 8 * hidden

    if complex_lstm:
        h = rnn_units // 2
        return n + 2 * lstm(feat // 2, h) + 2 * lstm(h, h) + 2 * (h * feat // 2 + feat // 2)
    return n + lstm(feat, rnn_units) + lstm(rnn_units, rnn_units) + rnn_units * feat + feat


def test_closed_form_reproduces_the_spec_counts():
    assert closed_form_params([32, 64, 128, 256, 256, 256], 256, True) == 3_671_053
    assert closed_form_params([16, 32, 64, 128, 256, 256], 256, False) == 3_742_349
    assert closed_form_params([16, 32, 64, 128, 256, 256], 256, True) == 2_693_773
    assert closed_form_params([32, 64, 128, 128, 256, 256], 256, False) == 3_981_581


@pytest.mark.parametrize("preset, expected", [
    ("paper-teacher", 3_671_053), ("paper-e", 3_742_349), ("paper-r", 3_742_349), ("paper-c", 3_742_349)])
def test_paper_sizes(preset, expected):
    assert abs(build("dccrn", preset).n_params - expected) <= 0.01 * expected


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_matches_the_closed_form(preset):
    kwargs = presets("dccrn")[preset]
    expected = closed_form_params(kwargs["kernel_num"], kwargs["rnn_units"], kwargs.get("complex_lstm", False))
    assert build("dccrn", preset).n_params == expected


@pytest.mark.parametrize("preset", ["tiny-teacher", "paper-e"])
def test_features_by_stage(preset):
    model = build("dccrn", preset).eval()
    kernel_num, length = list(presets("dccrn")[preset]["kernel_num"]), 3001
    with torch.no_grad():
        out, feats = model(torch.randn(2, length), return_features=True)
    frames = model.stft.frames(length)
    assert out.shape == (2, length)
    assert [f.shape for f in feats["encoder"]] == [
        (2, c, frames, 256 // 2 ** (i + 1)) for i, c in enumerate(kernel_num)]
    assert [f.shape for f in feats["decoder"]] == [
        (2, c, frames, 256 // 2 ** (5 - i)) for i, c in enumerate([*kernel_num[-2::-1], 2])]
    hidden = presets("dccrn")[preset]["rnn_units"]
    assert [f.shape for f in feats["middle"]] == [(2, hidden, frames, 1), (2, kernel_num[-1], frames, 4)]


def test_lookahead_declared():
    for preset, options in presets("dccrn").items():
        model = build("dccrn", preset)
        hop, win = options.get("hop_length", 100), options.get("win_length", 400)
        assert model.causal is True
        assert model.lookahead == 6 * hop + win - 2
    assert build("dccrn", "paper-teacher").lookahead == 998  # 37.5 ms of decoder look-ahead + the window


@pytest.fixture(scope="module")
def causal_model():
    torch.manual_seed(0)
    return build("dccrn", "tiny-student", n_fft=512, hop_length=100, win_length=400).double().eval()


def test_lookahead_is_tight(causal_model):
    """Output sample n depends on input n + lookahead exactly when n sits at the first non-zero
    window sample of a frame (n = 100 k - 356 + 56 + 1, the STFT pads 356 samples on the left and
    centres the 400-sample window in the 512-sample frame); nowhere on anything later."""
    reach = future_reach(causal_model, 4000, (1001, 1002, 1100, 2001, 2500))
    assert max(reach.values()) == reach[1001] == reach[2001] == causal_model.lookahead
    assert reach[1002] == causal_model.lookahead - 1 and reach[1100] == causal_model.lookahead - 99


def test_no_output_clamp():
    model = build("dccrn", "tiny-student").eval()
    with torch.no_grad():
        out = model(3.0 * torch.randn(1, 4000))
    assert out.abs().max() > 1.0


def test_bad_input_is_rejected():
    model = build("dccrn", "tiny-student")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.randn(100))
    with pytest.raises(ValueError, match="masking_mode"):
        build("dccrn", "tiny-student", masking_mode="X")
    with pytest.raises(ValueError, match="n_fft"):
        build("dccrn", "tiny-student", n_fft=500)


# ---- complex building blocks against torch's complex arithmetic ------------------------------------------

def _as_complex(x, dim=1):
    real, imag = x.chunk(2, dim)
    return torch.complex(real, imag)


def _weights(layer):
    """The complex weight A + iB and the author's bias (b_A - b_B) + i (b_A + b_B)."""
    a, b = layer.real, layer.imag
    return torch.complex(a.weight, b.weight), torch.complex(a.bias - b.bias, a.bias + b.bias)


def test_complex_conv_is_a_complex_convolution():
    torch.manual_seed(0)
    layer = ComplexConv2d(6, 8, (2, 5), stride=(1, 2), padding=(0, 2))
    x = torch.randn(3, 6, 7, 16)
    weight, bias = _weights(layer)
    expected = F.conv2d(_as_complex(x), weight, bias, stride=(1, 2), padding=(0, 2))
    torch.testing.assert_close(_as_complex(layer(x)), expected, rtol=1e-5, atol=1e-5)


def test_complex_transposed_conv_is_a_complex_transposed_convolution():
    torch.manual_seed(0)
    layer = ComplexConvTranspose2d(8, 4, (2, 5), stride=(1, 2), padding=(0, 2), output_padding=(0, 1))
    x = torch.randn(2, 8, 5, 8)
    weight, bias = _weights(layer)
    expected = F.conv_transpose2d(_as_complex(x), weight, bias, stride=(1, 2), padding=(0, 2),
                                  output_padding=(0, 1))
    assert expected.shape[-1] == 16
    torch.testing.assert_close(_as_complex(layer(x)), expected, rtol=1e-5, atol=1e-5)


def _lstm_reference(lstm, x):
    """A plain LSTM recursion (gates i, f, g, o) from the layer's weights, [B, T, I] -> [B, T, H]."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    h = c = torch.zeros(x.shape[0], lstm.hidden_size)
    outputs = []
    for step in x.unbind(1):
        i, f, g, o = (step @ w_ih.T + h @ w_hh.T + bias).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, 1)


def test_complex_lstm_combines_two_real_lstms_like_a_complex_product():
    torch.manual_seed(0)
    layer = ComplexLSTM(8, 6, projection=10)
    x = torch.randn(2, 5, 8)
    real, imag = x.chunk(2, -1)
    with torch.no_grad():
        out_r = _lstm_reference(layer.real.lstm, real) - _lstm_reference(layer.imag.lstm, imag)
        out_i = _lstm_reference(layer.imag.lstm, real) + _lstm_reference(layer.real.lstm, imag)
        expected = torch.cat([layer.proj_real(out_r), layer.proj_imag(out_i)], -1)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_masks_follow_their_definitions():
    torch.manual_seed(0)
    spec = torch.randn(2, 9, 7, dtype=torch.complex128)
    mask = torch.randn(2, 9, 7, dtype=torch.complex128)
    polar = torch.polar(torch.tanh(mask.abs()) * spec.abs(), spec.angle() + mask.angle())
    torch.testing.assert_close(apply_mask(spec, mask, "E", eps=0.0), polar)
    torch.testing.assert_close(apply_mask(spec, mask, "E"), polar, rtol=1e-6, atol=1e-7)
    product = torch.complex(spec.real * mask.real - spec.imag * mask.imag,
                            spec.real * mask.imag + spec.imag * mask.real)
    torch.testing.assert_close(apply_mask(spec, mask, "C"), product)
    torch.testing.assert_close(apply_mask(spec, mask, "R"),
                               torch.complex(spec.real * mask.real, spec.imag * mask.imag))
    assert apply_mask(spec, mask, "E").abs().le(spec.abs() + 1e-12).all()  # |tanh| < 1 bounds the gain
    with pytest.raises(ValueError, match="masking mode"):
        apply_mask(spec, mask, "Q")
