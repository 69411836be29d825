"""Conv-TasNet and the shared real blocks: sizes, torchaudio equivalence, causality, norms, chunking."""
import pytest
import torch
import torchaudio

from selib.models import build
from selib.models.blocks import (ChannelLayerNorm, CumulativeLayerNorm, GlobalLayerNorm, WaveCodec, chunk,
                                 make_norm, mask_activation, overlap_add)
from selib.models.convtasnet import load_torchaudio_state_dict


def closed_form_params(N, L, B, H, Sc, P, X, R):
    """Parameter count of the layout, written out layer by layer (biases, PReLUs and norm affines)."""
    block = (B * H + H) + 1 + 2 * H + (H * P + H) + 1 + 2 * H + (H * Sc + Sc)
    residual = H * B + B
    return (2 * N * L + 2 * N + (N * B + B) + R * X * block + (R * X - 1) * residual
            + 1 + (Sc * N + N))


def test_paper_teacher_size_matches_spec_and_torchaudio():
    model = build("convtasnet", "paper-teacher")
    assert abs(model.n_params - 4_918_833) <= 0.01 * 4_918_833
    assert model.n_params == closed_form_params(512, 16, 128, 512, 128, 3, 8, 3) == 4_918_833
    reference = torchaudio.models.ConvTasNet(num_sources=1)
    assert model.n_params == sum(p.numel() for p in reference.parameters())


def test_student_halves_widths():
    assert build("convtasnet", "paper-student").n_params == closed_form_params(256, 16, 64, 256, 64, 3, 8, 3)
    assert build("convtasnet", "tiny-teacher").n_params == closed_form_params(128, 16, 64, 128, 64, 3, 4, 2)
    assert build("convtasnet", "tiny-student").n_params == closed_form_params(64, 16, 32, 64, 32, 3, 4, 2)


@pytest.mark.parametrize("preset, widths, activation, length", [
    # torchaudio's conv_tasnet_base(num_sources=1): the paper sizes with a ReLU mask
    ("paper-teacher", dict(enc_num_feats=512, msk_num_feats=128, msk_num_hidden_feats=512, msk_num_layers=8,
                           msk_num_stacks=3), "relu", 3001),
    ("tiny-teacher", dict(enc_num_feats=128, msk_num_feats=64, msk_num_hidden_feats=128, msk_num_layers=4,
                          msk_num_stacks=2), "sigmoid", 2000),
])
def test_torchaudio_weights_give_the_same_output(preset, widths, activation, length):
    torch.manual_seed(0)
    reference = torchaudio.models.ConvTasNet(num_sources=1, enc_kernel_size=16, msk_kernel_size=3,
                                             msk_activate=activation, **widths).eval()
    model = build("convtasnet", preset, mask=activation).eval()
    load_torchaudio_state_dict(model, reference.state_dict())
    noisy = 0.1 * torch.randn(2, length)
    with torch.no_grad():
        expected = reference(noisy.unsqueeze(1))[:, 0]
        got = model(noisy)
    assert got.shape == noisy.shape
    assert (got - expected).abs().max() < 1e-5
    assert expected.abs().max() > 1e-3  # the comparison is not between two near-zero signals


def test_paper_causal_has_exactly_the_encoder_window_as_lookahead():
    torch.manual_seed(0)
    model = build("convtasnet", "paper-causal").double().eval()
    window = model.codec.encoder.kernel_size[0]
    stride = model.codec.stride
    assert model.causal and model.lookahead == window - 1 == 15
    x = torch.randn(1, 800, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)
        for t in (14 + stride * 50, 14 + stride * 50 + 5, 799 - 16):
            changed = x.clone()
            changed[:, t + 1:] = torch.randn(1, 799 - t, dtype=torch.float64)
            out = model(changed)
            last_safe = t - model.lookahead
            assert torch.equal(out[:, :last_safe + 1], base[:, :last_safe + 1]), t
            if (last_safe + 1) % stride == 0:  # a frame start: its frame reads sample t + 1, so it changes
                assert (out[:, last_safe + 1] - base[:, last_safe + 1]).abs() > 1e-9


def test_bad_configuration_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="cLN"):
        build("convtasnet", "paper-teacher", causal=True)
    with pytest.raises(ValueError, match="even"):
        build("convtasnet", "tiny-student", L=15)
    with pytest.raises(ValueError, match="sigmoid"):
        build("convtasnet", "tiny-student", mask="softmax")
    with pytest.raises(ValueError, match="gLN"):
        make_norm("BN", 4)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        build("convtasnet", "tiny-student")(torch.randn(100))


def test_norms_against_direct_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    cum = CumulativeLayerNorm(3).double()
    expected = torch.empty_like(x)
    for t in range(7):
        past = x[:, :, :t + 1]
        mean = past.mean(dim=(1, 2), keepdim=True)
        var = past.var(dim=(1, 2), unbiased=False, keepdim=True)
        expected[:, :, t] = ((x[:, :, t:t + 1] - mean) / torch.sqrt(var + 1e-8))[:, :, 0]
    assert torch.allclose(cum(x), expected, atol=1e-10)
    glob = GlobalLayerNorm(3).double()(x)
    mean, var = x.mean(dim=(1, 2), keepdim=True), x.var(dim=(1, 2), unbiased=False, keepdim=True)
    assert torch.allclose(glob, (x - mean) / torch.sqrt(var + 1e-8), atol=1e-10)
    chan = ChannelLayerNorm(3).double()(x)
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, unbiased=False, keepdim=True)
    assert torch.allclose(chan, (x - mean) / torch.sqrt(var + 1e-8), atol=1e-10)


def test_chunks_overlap_by_half_and_add_back_to_twice_the_input():
    x = torch.randn(2, 3, 37)
    chunks = chunk(x, 10)
    assert chunks.shape[:3] == (2, 3, 10)
    assert torch.equal(chunks[:, :, 5:, 0], chunks[:, :, :5, 1])  # 50 % overlap
    assert torch.equal(chunks[:, :, 5:, 0], x[:, :, :5])  # the first chunk starts half a chunk early
    assert torch.allclose(overlap_add(chunks, 37), 2 * x)
    with pytest.raises(ValueError, match="even"):
        chunk(x, 7)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 1001])
def test_codec_returns_every_sample(length):
    codec = WaveCodec(4, 16)
    feats = codec.encode(torch.randn(2, length))
    assert feats.shape == (2, 4, codec.frames(length))
    assert codec.decode(feats, length).shape == (2, length)
    assert isinstance(mask_activation("relu"), torch.nn.ReLU)
