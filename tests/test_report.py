"""selib report on run folders written by hand with known scores: roles from the configs, pairing by seed
and utterance, per-SNR rows, the share of the gap closed, and the files it writes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from selib.report import report
from selib.config import load

SEEDS, UTTERANCES, SNRS = (0, 1, 2), [f"test_{i:04d}" for i in range(12)], (-5.0, 5.0, 15.0)
SNR_OF = {u: SNRS[i % len(SNRS)] for i, u in enumerate(UTTERANCES)}
BAD = ("kd", 1, "test_0003")        # one utterance the KD student of seed 1 could not score


def _write_run(root: Path, config: dict, seed: int, scores: dict[str, dict[str, float]], params: int) -> Path:
    cfg = load(config, {"seed": seed})
    run_dir = root / f"{cfg.name}-s{seed}"
    cfg.dump(run_dir / "config.yaml")
    with open(run_dir / "scores.csv", "w", newline="") as handle:
        fields = ["id"] + [f"{m}{suffix}" for m in scores for suffix in ("", "_status", "_reason")]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for u in UTTERANCES:
            row = {"id": u}
            for metric, values in scores.items():
                ok = not np.isnan(values[u])
                row.update({metric: values[u], f"{metric}_status": "ok" if ok else "error",
                            f"{metric}_reason": "" if ok else "silent estimate"})
            writer.writerow(row)
    summary = {m: {"mean": float(np.nanmean(list(v.values())))} for m, v in scores.items()}
    (run_dir / "metrics.json").write_text(json.dumps({"summary": summary, "model": {"params": params},
                                                      "timing": {"train_seconds": 10.0}}))
    return run_dir


# The module fixtures build real corpora and runs: one worker builds them once (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Teacher, scratch and one KD student (3 seeds each) with random known scores, and a failed run."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps(
        {"splits": {"test": [{"id": u, "snr_db": SNR_OF[u]} for u in UTTERANCES]}}))
    runs_root = root / "runs"
    data = {"name": "embedded", "root": str(corpus)}
    # Names that give nothing away: roles must come from the configs.
    configs = {
        "teacher": {"name": "alpha", "model": {"family": "dccrn", "preset": "tiny-student"}, "data": data},
        "scratch": {"name": "beta", "model": {"family": "dccrn", "preset": "tiny-student"}, "data": data},
        "kd": {"name": "gamma", "model": {"family": "dccrn", "preset": "tiny-student"}, "data": data,
               "kd": {"method": "logits-sisnr"},
               "teacher": {"family": "dccrn", "preset": "tiny-student",
                           "checkpoint": str(runs_root / "alpha-s{seed}" / "best.pt")}},
    }
    rng = np.random.default_rng(0)
    offsets = {"teacher": 2.0, "scratch": 0.0, "kd": 0.5}
    scores = {}
    for role, config in configs.items():
        for seed in SEEDS:
            values = {m: {u: float(rng.normal(10 * (m == "si_sdr") + 2 + offsets[role], 1.0)) for u in UTTERANCES}
                      for m in ("si_sdr", "pesq_wb")}
            if (role, seed) == BAD[:2]:
                values["si_sdr"][BAD[2]] = float("nan")
            scores[role, seed] = values
            _write_run(runs_root, config, seed, values, params=1000 + len(role))
    failed = runs_root / "delta-s0"
    failed.mkdir()
    (failed / "params.yaml").write_text("seed: 0\n")
    (failed / "FAILED").write_text("reason: FileNotFoundError: teacher checkpoint missing\nlog: x\n")
    out = root / "out"
    table = report(runs_root, out, n_boot=2000)
    return table, scores, out


def _differences(scores, metric, against="scratch", utterances=UTTERANCES):
    """seeds × utterances matrix of KD − ``against``, on the utterances every compared run scored."""
    keep = [u for u in utterances if not (metric == "si_sdr" and u == BAD[2])]
    return np.array([[scores["kd", s][metric][u] - scores[against, s][metric][u] for u in keep] for s in SEEDS])


def test_roles_come_from_the_configs(runs):
    table, _, _ = runs
    assert [(r["name"], r["role"], r["seeds"]) for r in table] == [("alpha", "teacher", 3), ("beta", "scratch", 3),
                                                                   ("gamma", "kd", 3)]


def test_paired_differences_and_gap_closed_match_an_independent_computation(runs):
    table, scores, _ = runs
    gamma = next(r for r in table if r["name"] == "gamma")
    for metric in ("si_sdr", "pesq_wb"):
        diff = _differences(scores, metric)
        teacher_gap = diff - _differences(scores, metric, against="teacher")      # teacher − scratch
        assert gamma[f"{metric}_diff"] == pytest.approx(diff.mean(), abs=1e-12)
        assert gamma[f"{metric}_gap_closed"] == pytest.approx(diff.mean() / teacher_gap.mean(), abs=1e-12)
        # A loop bootstrap written here: seeds and utterances drawn independently.
        rng = np.random.default_rng(11)
        reps = [diff[rng.integers(0, 3, 3)][:, rng.integers(0, diff.shape[1], diff.shape[1])].mean()
                for _ in range(2000)]
        low, high = np.quantile(reps, [0.025, 0.975])
        width = high - low
        assert gamma[f"{metric}_diff_low"] == pytest.approx(low, abs=0.1 * width)
        assert gamma[f"{metric}_diff_high"] == pytest.approx(high, abs=0.1 * width)
    assert all("si_sdr_diff" not in r for r in table if r["role"] != "kd")


def test_per_snr_rows_and_the_files_written(runs):
    _, scores, out = runs
    with open(out / "report_paired.csv") as handle:
        rows = list(csv.DictReader(handle))
    by_snr = {(r["metric"], r["snr_db"]): r for r in rows if r["name"] == "gamma"}
    assert set(by_snr) == {(m, s) for m in ("si_sdr", "pesq_wb") for s in ("all", *map(str, SNRS))}
    for snr in SNRS:
        subset = [u for u in UTTERANCES if SNR_OF[u] == snr]
        diff = _differences(scores, "si_sdr", utterances=subset)
        row = by_snr["si_sdr", str(snr)]
        assert float(row["diff_mean"]) == pytest.approx(diff.mean(), abs=1e-9)
        assert int(row["n_utterances"]) == diff.shape[1] and int(row["n_seeds"]) == 3
        assert row["scratch"] == "beta" and row["teacher"] == "alpha"
    report = json.loads((out / "report.json").read_text())
    assert {r["name"] for r in report["runs"]} == {"alpha", "beta", "gamma"}
    assert len(report["paired"]) == len(rows) and report["bootstrap"]["n_boot"] == 2000
    assert report["failed"][0]["reason"].startswith("FileNotFoundError")
    markdown = (out / "report.md").read_text()
    overall = by_snr["si_sdr", "all"]
    interval = f"{float(overall['diff_mean']):+.3f} [{float(overall['diff_low']):+.3f}, " \
               f"{float(overall['diff_high']):+.3f}]"
    assert interval in markdown and "### Δ si_sdr by test SNR" in markdown and "3 × 11" in markdown
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_explicit_role_wins_and_an_ambiguous_scratch_is_not_paired(tmp_path):
    data = {"name": "voicebank"}
    values = {"si_sdr": {u: 1.0 for u in UTTERANCES}}
    for name in ("one", "two"):
        _write_run(tmp_path / "runs", {"name": name, "data": data}, 0, values, 10)
    _write_run(tmp_path / "runs", {"name": "lead", "role": "teacher", "data": data,
                                   "model": {"preset": "tiny-teacher"}}, 0, values, 10)
    _write_run(tmp_path / "runs", {"name": "kd", "data": data, "kd": {"method": "dfkd"},
                                   "teacher": {"family": "dccrn", "preset": "tiny-teacher",
                                               "checkpoint": "elsewhere/best.pt"}}, 0, values, 10)
    table = report(tmp_path / "runs", tmp_path / "out", n_boot=100)
    assert {r["name"]: r["role"] for r in table} == {"lead": "teacher", "one": "scratch", "two": "scratch",
                                                    "kd": "kd"}
    assert "kd: several scratch students" in (tmp_path / "out" / "report.md").read_text()
