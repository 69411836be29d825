"""The seed × utterance bootstrap of selib.stats on cases whose answer is known."""
import numpy as np
import pytest

from selib.stats import paired_bootstrap


def test_constant_differences_give_a_zero_width_interval_at_the_constant():
    out = paired_bootstrap(np.full((3, 40), 0.25))
    assert out["mean"] == out["low"] == out["high"] == pytest.approx(0.25, abs=1e-12)
    assert (out["n_seeds"], out["n_utterances"]) == (3, 40)


def test_hand_computed_tiny_cases():
    # One seed, utterances {0, 1}: a replicate draws two of them, so its mean is 0, 0.5 or 1 with
    # probabilities 1/4, 1/2, 1/4. The 95 % interval spans [0, 1]; the central 40 % is {0.5}.
    assert paired_bootstrap([[0.0, 1.0]]) == {"mean": 0.5, "low": 0.0, "high": 1.0, "n_seeds": 1,
                                              "n_utterances": 2}
    central = paired_bootstrap([[0.0, 1.0]], confidence=0.4)
    assert central["low"] == central["high"] == 0.5
    # Two seeds, one utterance: seeds are resampled too, the same three values {1, 2, 3}.
    seeds = paired_bootstrap([[1.0], [3.0]])
    assert (seeds["mean"], seeds["low"], seeds["high"]) == (2.0, 1.0, 3.0)
    # A ratio of two means over the same draws: a constant ratio stays exact.
    diff = np.array([[1.0, 2.0, 4.0], [0.5, 3.0, 1.0]])
    share = paired_bootstrap(diff, 2 * diff)
    assert share["mean"] == share["low"] == share["high"] == pytest.approx(0.5)


def test_normal_differences_give_the_normal_interval_for_large_n():
    rng = np.random.default_rng(1)
    diff = rng.normal(0.3, 2.0, size=(1, 2000))
    out = paired_bootstrap(diff, seed=3)
    half = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert out["mean"] == pytest.approx(diff.mean())
    assert out["low"] == pytest.approx(diff.mean() - half, abs=0.05 * half)
    assert out["high"] == pytest.approx(diff.mean() + half, abs=0.05 * half)


def test_seeds_and_utterances_are_resampled_as_crossed_factors():
    # diff[s, u] = a_s + b_u: the mean's variance is var(a)/S + var(b)/U (population variances),
    # far more than resampling the S*U cells as if independent would give.
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1.0, 300), rng.normal(0, 2.0, 300)
    out = paired_bootstrap(a[:, None] + b[None, :], n_boot=20_000)
    half = 1.96 * np.sqrt(a.var() / a.size + b.var() / b.size)
    assert out["high"] - out["low"] == pytest.approx(2 * half, rel=0.05)


def test_same_seed_same_interval_and_bad_input_is_refused():
    diff = np.random.default_rng(0).normal(size=(2, 30))
    assert paired_bootstrap(diff, seed=7) == paired_bootstrap(diff, seed=7)
    with pytest.raises(ValueError, match="seeds x utterances"):
        paired_bootstrap([1.0, 2.0])
    with pytest.raises(ValueError, match="confidence=1.5"):
        paired_bootstrap([[1.0]], confidence=1.5)
