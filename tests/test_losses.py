"""Tests of selib.losses against the metric, independent formulas and torch.stft directly."""
import numpy as np
import pytest
import torch

from selib import losses, metrics
import reference  # tests/helpers: independent numpy references


def batch(seed=0, shape=(3, 2048)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(shape, generator=g, dtype=torch.float64) + 0.2
    est = ref + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return est, ref


@pytest.mark.parametrize("name, zero_mean", [("sisnr", True), ("sisnr-nozm", False)])
def test_sisnr_losses_are_negated_metric(name, zero_mean):
    est, ref = batch()
    loss = losses.se_loss(name)(est, ref)  # the eps-free formula agrees to rel 1e-7 (eps = 1e-8)
    assert float(loss) == pytest.approx(-reference.si_sdr(est.numpy(), ref.numpy(), zero_mean).mean(), rel=1e-7)
    assert float(loss) == pytest.approx(-float(metrics.si_sdr_torch(est, ref, zero_mean).mean()), rel=1e-12)
    assert float(losses.se_loss()(est, ref)) == pytest.approx(-reference.si_sdr(est.numpy(), ref.numpy()).mean(), rel=1e-7)
    assert float(losses.neg_si_snr(est[0], ref[0])) == pytest.approx(-metrics.si_snr(est[0], ref[0]),
                                                                     rel=1e-7)


def test_neg_si_snr_gradient_matches_finite_differences():
    est, ref = batch(1, (2, 64))
    assert torch.autograd.gradcheck(lambda e: losses.neg_si_snr(e, ref), (est.requires_grad_(),))


@pytest.mark.parametrize("name, power", [("spec-mse", 2), ("spec-mae", 1)])
@pytest.mark.parametrize("magnitude", [False, True])
def test_spectral_losses_match_independent_formula(name, power, magnitude):
    est, ref = batch(2)
    for options in ({}, {"n_fft": 256, "hop_length": 64}):
        n_fft, hop = options.get("n_fft", 512), options.get("hop_length", 128)
        s_est, s_ref = reference.stft(est.numpy(), n_fft, hop), reference.stft(ref.numpy(), n_fft, hop)
        if magnitude:
            s_est, s_ref = np.abs(s_est), np.abs(s_ref)
        want = (np.abs(s_est - s_ref) ** power).mean()
        got = losses.se_loss(name, magnitude=magnitude, **options)(est, ref)
        assert float(got) == pytest.approx(float(want), rel=1e-6)  # selib keeps a float32 window
    functional = losses.spectral_mse if power == 2 else losses.spectral_mae
    assert float(functional(est, ref, magnitude=magnitude)) == pytest.approx(
        float(losses.se_loss(name, magnitude=magnitude)(est, ref)), rel=1e-12)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_losses_finite_for_silent_targets(name):
    loss_fn = losses.se_loss(name)
    for est in (torch.randn(2, 4000), torch.zeros(2, 4000)):
        est = est.clone().requires_grad_()
        loss = loss_fn(est, torch.zeros(2, 4000))
        loss.backward()
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert torch.isfinite(est.grad).all()
    est = torch.zeros(2, 4000, requires_grad=True)
    losses.se_loss(name, **({"magnitude": True} if name.startswith("spec") else {}))(
        est, torch.zeros(2, 4000)).backward()
    assert torch.isfinite(est.grad).all()


def test_bad_names_and_options():
    with pytest.raises(ValueError) as info:
        losses.se_loss("l1")
    for name in losses.LOSSES:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="eps"):
        losses.se_loss("sisnr", n_fft=512)
    with pytest.raises(TypeError, match="n_fft"):
        losses.se_loss("spec-mse", eps=1e-8)
    with pytest.raises(ValueError, match="same shape"):
        losses.spectral_mse(torch.zeros(1, 100), torch.zeros(1, 90))
