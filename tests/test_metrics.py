"""Tests of selib.metrics: spec test vectors, identities, agreement with the pesq/pystoi packages,
independent re-implementations of the Loizou measures, and selib.evaluation.evaluate()'s per-utterance
statuses."""
import csv
import json
import math

import numpy as np
import pesq
import pystoi
import pytest
import scipy.linalg
import torch
from scipy import signal

from selib import evaluation as E
from selib import metrics as M
import reference  # tests/helpers: independent numpy references

SR = 16000


def speech_like(seconds=2.0, seed=0):
    """Voiced speech stand-in: a gliding harmonic source through three formant resonators that change
    every 250 ms syllable, under a 4 Hz syllable envelope with short pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = 110 + 40 * rng.random() + 25 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    source = sum(np.sin(k * phase) / k for k in range(1, 40))
    out = np.zeros(n)
    syllable = SR // 4
    for start in range(0, n, syllable):
        y = source[start:start + syllable]
        for lo, hi, bw in ((300, 900, 80), (900, 2500, 120), (2500, 3500, 200)):
            r, theta = np.exp(-np.pi * bw / SR), 2 * np.pi * rng.uniform(lo, hi) / SR
            y = signal.lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], y)
        out[start:start + syllable] = y * rng.uniform(0.5, 1.0)
    x = out * np.clip(np.sin(4 * np.pi * t), 0, None) ** 0.7 + 1e-4 * rng.standard_normal(n)
    return 0.3 * x / np.abs(x).max()


def at_snr(clean, snr_db, seed=1):
    noise = np.random.default_rng(seed).standard_normal(clean.size)
    return clean + noise * np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))


@pytest.fixture(scope="module")
def clean():
    return speech_like()


# ------------------------------------------------------------------------------------------ SI-SDR


def test_si_sdr_spec_example():
    ref, est = np.array([3.0, -0.5, 2.0, 7.0]), np.array([2.5, 0.0, 2.0, 8.0])
    assert M.si_sdr(est, ref, zero_mean=False) == pytest.approx(18.4030, abs=1e-4)
    assert M.si_snr(est, ref) == pytest.approx(15.0918, abs=1e-4)
    assert M.si_sdr(est, ref) == M.si_snr(est, ref)


@pytest.mark.parametrize("zero_mean", [True, False])
def test_si_sdr_torch_matches_independent_formula(zero_mean):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 1000)) + 0.5
    est = ref + 0.3 * rng.standard_normal((4, 1000))
    got = M.si_sdr_torch(torch.from_numpy(est), torch.from_numpy(ref), zero_mean=zero_mean).numpy()
    want = [reference.si_sdr(e, r, zero_mean) for e, r in zip(est, ref)]
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_si_sdr_torch_silent_target_is_finite_with_finite_gradient():
    est = torch.randn(2, 800, requires_grad=True)
    ref = torch.zeros(2, 800)
    value = M.si_sdr_torch(est, ref)
    assert torch.allclose(value, torch.full((2,), -80.0))  # the eps floor: 10 log10(1e-8)
    value.sum().backward()
    assert torch.isfinite(est.grad).all()
    silent = torch.zeros(1, 800, requires_grad=True)
    out = M.si_sdr_torch(silent, torch.zeros(1, 800), zero_mean=False)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(silent.grad).all()
    x = torch.randn(1, SR)
    assert 100 < float(M.si_sdr_torch(x, x)) < 200  # x vs x in float32: large but finite


# ------------------------------------------------------------------------------ composite and identity

def test_composite_formula_loizou_readme_vector():
    out = M.composite_from_components(llr=0.681368, ssnr=3.991727, wss=49.671978, pesq=2.255732)
    assert out["csig"] == pytest.approx(3.3050, abs=5e-5)
    assert out["cbak"] == pytest.approx(2.6160, abs=5e-5)
    assert out["covl"] == pytest.approx(2.7133, abs=5e-5)


def test_identity_values(clean):
    wb_ceiling = 0.999 + 4 / (1 + math.exp(-1.3669 * 4.5 + 3.8224))  # P.862.2 mapping at raw 4.5
    nb_ceiling = 0.999 + 4 / (1 + math.exp(-1.4945 * 4.5 + 4.6607))  # P.862.1 mapping at raw 4.5
    assert M.pesq_wb(clean, clean) == pytest.approx(wb_ceiling, abs=2e-3)
    assert M.pesq_nb(clean, clean) == pytest.approx(nb_ceiling, abs=2e-3)
    assert M.stoi(clean, clean) == pytest.approx(1.0, abs=1e-9)
    assert M.estoi(clean, clean) == pytest.approx(1.0, abs=1e-9)
    comp = M.composite(clean, clean)
    assert comp["llr"] == 0.0 and comp["wss"] == 0.0 and comp["ssnr"] == 35.0
    assert comp["csig"] == comp["cbak"] == comp["covl"] == 5.0
    assert M.llr(clean, clean) == 0.0 and M.wss(clean, clean) == 0.0


def test_agreement_with_packages(clean):
    noisy = at_snr(clean, 5)
    assert M.pesq_wb(noisy, clean) == pesq.pesq(SR, clean, noisy, "wb")
    assert M.pesq_nb(noisy, clean) == pesq.pesq(SR, clean, noisy, "nb")
    assert M.stoi(noisy, clean) == pystoi.stoi(clean, noisy, SR)
    np.random.seed(7)
    direct = pystoi.stoi(clean, noisy, SR, extended=True)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    assert M.estoi(noisy, clean, seed=7) == direct
    assert np.random.random() == before  # the global generator is left as it was


# ------------------------------------------------- component-level checks against the MATLAB definitions

def matlab_frames(x):
    """Loizou's framing: 30 ms, skip win/4, MATLAB Hann, num_frames = len/skip - win/skip (floored)."""
    win, skip = 480, 120
    window = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, win + 1) / (win + 1)))
    count = int(math.floor(x.size / skip - win / skip))
    return [x[i * skip:i * skip + win] * window for i in range(count)]


def loop_ssnr(est, ref):
    eps = np.finfo(float).eps
    values = []
    for c, p in zip(matlab_frames(ref), matlab_frames(est)):
        snr = 10 * math.log10(np.sum(c ** 2) / (np.sum((c - p) ** 2) + eps) + eps)
        values.append(min(max(snr, -10.0), 35.0))
    return np.mean(values)


def trimmed(values):
    values = np.sort(values)
    return np.mean(values[:int(math.floor(len(values) * 0.95 + 0.5))])


def loop_llr(est, ref, clip):
    values = []
    for c, p in zip(matlab_frames(ref), matlab_frames(est)):
        rc = np.array([np.dot(c[:c.size - k], c[k:]) for k in range(17)])
        rp = np.array([np.dot(p[:p.size - k], p[k:]) for k in range(17)])
        a_c = np.r_[1.0, -scipy.linalg.solve_toeplitz(rc[:16], rc[1:])]  # normal equations, no Levinson
        a_p = np.r_[1.0, -scipy.linalg.solve_toeplitz(rp[:16], rp[1:])]
        big_r = scipy.linalg.toeplitz(rc)
        d = math.log((a_p @ big_r @ a_p) / (a_c @ big_r @ a_c))
        values.append(min(d, 2.0) if clip else d)
    return trimmed(values)


def loop_wss(est, ref):
    """Literal transcription of the WSS definition, one frame and one band at a time."""
    n_fft, half, n_crit = 1024, 512, 25
    filters = np.zeros((n_crit, half))
    for i in range(n_crit):
        f0 = M._WSS_CENTRES[i] / 8000 * half
        bw = M._WSS_BANDWIDTHS[i] / 8000 * half
        row = np.exp(-11 * ((np.arange(half) - math.floor(f0)) / bw) ** 2
                     + math.log(70.0) - math.log(M._WSS_BANDWIDTHS[i]))
        filters[i] = row * (row > math.exp(-30.0 / (2.0 * 2.303)))
    values = []
    for c, p in zip(matlab_frames(ref), matlab_frames(est)):
        energies, slopes, peaks = [], [], []
        for frame in (c, p):
            spec = np.abs(np.fft.fft(frame, n_fft)) ** 2
            e = 10 * np.log10(np.maximum(filters @ spec[:half], 1e-10))
            s = e[1:] - e[:-1]
            peak = np.zeros(n_crit - 1)
            for i in range(n_crit - 1):  # 0-based transcription of the MATLAB while loops
                n = i
                if s[i] > 0:
                    while n < n_crit - 1 and s[n] > 0:
                        n += 1
                    peak[i] = e[n - 1]
                else:
                    while n >= 0 and s[n] <= 0:
                        n -= 1
                    peak[i] = e[n + 1]
            energies.append(e)
            slopes.append(s)
            peaks.append(peak)
        w = sum(20 / (20 + e.max() - e[:-1]) * 1 / (1 + pk - e[:-1]) for e, pk in zip(energies, peaks)) / 2
        values.append(np.sum(w * (slopes[0] - slopes[1]) ** 2) / np.sum(w))
    return trimmed(values)


def test_frame_measures_match_loop_implementations(clean):
    ref = clean[:8000]
    est = at_snr(ref, 5)
    assert M.ssnr(est, ref) == pytest.approx(loop_ssnr(est, ref), rel=1e-10)
    assert M.llr(est, ref) == pytest.approx(loop_llr(est, ref, clip=True), rel=1e-7)
    assert M.llr(est, ref, clip=False) == pytest.approx(loop_llr(est, ref, clip=False), rel=1e-7)
    assert M.wss(est, ref) == pytest.approx(loop_wss(est, ref), rel=1e-10)


# ---------------------------------------------------------------------------- evaluate and monotonicity

def test_evaluate_parallel_in_order_and_monotonic_in_snr(clean):
    snrs = [0, 5, 10, 20]
    items = [(f"snr{s}", at_snr(clean, s), clean) for s in snrs]  # one noise, scaled
    result = E.evaluate(items, metrics=E.DEFAULT_METRICS + ("llr", "wss"), workers=2)
    assert [row["id"] for row in result.rows] == [f"snr{s}" for s in snrs]
    assert all(row[f"{m}_status"] == "ok" for row in result.rows for m in result.metrics)
    for name in ("pesq_wb", "pesq_nb", "stoi", "estoi", "si_sdr", "csig", "cbak", "covl", "ssnr"):
        assert np.all(np.diff(result.values(name)) > 0), name
    for name in ("llr", "wss"):
        assert np.all(np.diff(result.values(name)) < 0), name
    # The pool computes what the single-utterance functions compute.
    for (uid, est, ref), row in zip(items, result.rows):
        assert row["pesq_wb"] == M.pesq_wb(est, ref)
        assert row["si_sdr"] == pytest.approx(M.si_sdr(est, ref), rel=1e-12)   # 1 vs 2 BLAS threads
    s = result.summary["si_sdr"]
    values = result.values("si_sdr")
    assert s["mean"] == pytest.approx(values.mean()) and s["std"] == pytest.approx(values.std(ddof=1))
    assert s["ci95"] == pytest.approx(3.182446 * values.std(ddof=1) / 2, rel=1e-5)  # t(0.975, 3)
    assert (s["n_ok"], s["n_total"]) == (4, 4)


def _thread_counts() -> tuple[int, set[int]]:
    from threadpoolctl import threadpool_info

    return torch.get_num_threads(), {pool["num_threads"] for pool in threadpool_info()}


def test_evaluate_workers_run_one_thread_each():
    # Forked workers otherwise keep this process's BLAS/OpenMP pools: 2 workers x 2 threads on 2 cores
    # made the pool no faster than one process (benchmarks/bench_metrics.py).
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, initializer=E._init_worker) as pool:
        torch_threads, blas_threads = pool.submit(_thread_counts).result()
    assert torch_threads == 1 and blas_threads == {1}


def test_estoi_in_evaluate_is_reproducible_per_utterance(clean):
    items = [("a", at_snr(clean, 0, seed=2), clean), ("b", at_snr(clean, 3, seed=3), clean)]
    forward = E.evaluate(items, metrics=("estoi",), workers=1)
    backward = E.evaluate(items[::-1], metrics=("estoi",), workers=1)
    assert forward.rows[0]["estoi"] == backward.rows[1]["estoi"]
    assert forward.rows[1]["estoi"] == backward.rows[0]["estoi"]


@pytest.mark.parametrize("workers", [1, 2])   # failures cross into worker processes with two
def test_evaluate_records_each_failure_and_scores_the_rest(clean, tmp_path, workers):
    good = at_snr(clean, 10)
    burst = np.zeros(SR)
    burst[12000:12400] = 1e-3 * np.random.default_rng(0).standard_normal(400)
    nan_est = good.copy()
    nan_est[100] = np.nan
    items = [
        ("ok1", good, clean),
        ("short", good[:3200], clean[:3200]),
        ("silent", good, np.zeros_like(clean)),
        ("nan", nan_est, clean),
        ("mismatch", good[:-10], clean),
        {"id": "rate8k", "estimate": good, "reference": clean, "sample_rate": 8000},
        ("burst", np.random.default_rng(1).standard_normal(SR), burst),
        ("zeros", np.zeros_like(clean), clean),
        ("ok2", torch.from_numpy(at_snr(clean, 20)).float(), torch.from_numpy(clean).float()),
        {"id": "lost", "status": "unreadable", "reason": "lost.wav: cannot be read as audio"},
    ]
    result = E.evaluate(items, workers=workers, csv_path=tmp_path / "scores.csv",
                        json_path=tmp_path / "out" / "metrics.json")
    rows = {row["id"]: row for row in result.rows}
    # nonfinite_output is given by enhance_and_score like unreadable here (tests/test_bad_eval.py)
    statuses = {row[f"{m}_status"] for row in result.rows for m in E.DEFAULT_METRICS}
    assert statuses == set(M.STATUSES) - {"nonfinite_output"}
    assert rows["lost"]["csig_reason"] == "lost.wav: cannot be read as audio"
    assert math.isnan(rows["lost"]["csig"])
    for uid in ("ok1", "ok2"):
        assert all(rows[uid][f"{m}_status"] == "ok" for m in E.DEFAULT_METRICS)
    for uid, status in (("silent", "silent_reference"), ("nan", "nonfinite_input"),
                        ("mismatch", "length_mismatch"), ("rate8k", "wrong_rate")):
        assert {rows[uid][f"{m}_status"] for m in E.DEFAULT_METRICS} == {status}, uid
        assert all(math.isnan(rows[uid][m]) for m in E.DEFAULT_METRICS)
    assert rows["short"]["pesq_wb_status"] == "too_short" and rows["short"]["csig_status"] == "too_short"
    assert rows["short"]["stoi_status"] == "too_few_frames" and rows["short"]["si_sdr_status"] == "ok"
    assert rows["burst"]["pesq_wb_status"] == "no_utterance" and rows["burst"]["covl_status"] == "no_utterance"
    assert rows["burst"]["stoi_status"] == "too_few_frames"
    assert "resample" in rows["rate8k"]["pesq_wb_reason"]
    assert rows["zeros"]["pesq_nb_status"] == "error" and "all zeros" in rows["zeros"]["pesq_nb_reason"]
    assert rows["zeros"]["si_sdr"] == pytest.approx(-80.0) and abs(rows["zeros"]["ssnr"]) < 1e-9  # 0 dB

    pesq_summary = result.summary["pesq_wb"]
    assert (pesq_summary["n_ok"], pesq_summary["n_total"]) == (2, 10)
    assert pesq_summary["statuses"] == {"ok": 2, "too_short": 1, "silent_reference": 1, "nonfinite_input": 1,
                                        "length_mismatch": 1, "wrong_rate": 1, "no_utterance": 1, "error": 1,
                                        "unreadable": 1}
    assert pesq_summary["mean"] == pytest.approx((rows["ok1"]["pesq_wb"] + rows["ok2"]["pesq_wb"]) / 2)
    assert result.summary["si_sdr"]["n_ok"] == 5  # ok1, short, burst, zeros, ok2

    with open(tmp_path / "scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == [r["id"] for r in result.rows]
    assert table[2]["stoi_status"] == "silent_reference"
    assert float(table[0]["pesq_wb"]) == rows["ok1"]["pesq_wb"]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["summary"]["pesq_wb"]["n_ok"] == 2
    assert saved["rows"][3]["pesq_wb"] is None and saved["rows"][3]["pesq_wb_status"] == "nonfinite_input"


def test_direct_calls_raise_clear_errors(clean):
    with pytest.raises(M.MetricError, match="resample") as info:
        M.pesq_wb(clean, clean, sample_rate=8000)
    assert info.value.status == "wrong_rate"
    with pytest.raises(M.MetricError) as info:
        M.stoi(clean, np.zeros_like(clean))
    assert info.value.status == "silent_reference"
    with pytest.raises(M.MetricError) as info:
        M.stoi(clean[:400], clean[:400])
    assert info.value.status == "too_short"
    with pytest.raises(ValueError, match="1-D"):
        M.si_sdr(clean[None], clean[None])
    with pytest.raises(ValueError, match="choose from"):
        E.evaluate([("a", clean, clean)], metrics=("pesq",))
    with pytest.raises(ValueError, match="item 0"):
        E.evaluate([("a", clean)])
    with pytest.raises(ValueError, match="workers"):
        E.evaluate([("a", clean, clean)], workers=0)
