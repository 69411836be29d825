"""Reports built from run folders only (lesson ``11_results_and_deployment``; ``selib report``):
:func:`report` groups the run folders by config name, tabulates mean ± std over seeds and pairs every KD
student with the scratch student of the same seed, utterance by utterance, with bootstrap intervals
(:func:`paired_statistics`), and writes ``report.md``, ``.csv``, ``_paired.csv``, ``.json`` and ``.png``.
"""
from __future__ import annotations

import csv
import glob
import json
import math
from pathlib import Path

import numpy as np

from selib.constants import KD_METHODS
from selib.files import write_csv, write_json
from selib.runs import DONE, RunDir


def _expand(runs) -> list[Path]:
    """Run folders from paths, globs, or roots whose sub-folders are runs."""
    if isinstance(runs, (str, Path)):
        runs = [runs]
    found = []
    for item in runs:
        matches = [Path(p) for p in sorted(glob.glob(str(item)))] or [Path(item)]
        for path in matches:
            if not path.is_dir():
                raise FileNotFoundError(f"{path}: no such run folder; pass run folders or a runs root.")
            if RunDir(path).is_run():
                found.append(path)
            else:
                found.extend(p for p in sorted(path.iterdir()) if RunDir(p).is_run())
    return found


def _metric_means(metrics: dict) -> dict[str, float]:
    """Test-set mean of each metric in a run's metrics.json (its ``summary`` section)."""
    return {k: float(v["mean"]) for k, v in metrics["summary"].items()
            if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))}


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def fmt_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _read_runs(runs) -> tuple[list[dict], list[dict], dict[Path, object]]:
    """(finished runs, failed or unfinished runs, every run's config) from run folders; a finished
    run is ``{"dir", "config", "metrics"}``. Configs go through :func:`selib.config.load`."""
    finished, failed, configs = [], [], {}
    for run_dir in _expand(runs):
        run, reason = RunDir(run_dir), None
        if run.config.is_file():
            try:
                configs[run_dir] = run.read_config()
            except ValueError as err:
                reason = f"{run.config.name} does not load: {err}"
        if reason is None and run_dir in configs and run.status == DONE:
            finished.append({"dir": run_dir, "config": configs[run_dir], "metrics": run.read_metrics()})
            continue
        log = run.error_log if run.error_log.is_file() else run.papermill_log
        failed.append({"run_dir": str(run_dir), "reason": reason or run.failure(), "log": str(log)})
    return finished, failed, configs


def _teacher_dir(config) -> Path | None:
    """The run folder holding a KD run's teacher checkpoint."""
    return None if config.teacher is None else Path(config.teacher.checkpoint).parent


def _same_folder(a: Path, b: Path) -> bool:
    """One run folder, by path, or by name when the folders were moved (same ``<name>-s<seed>``)."""
    return a.resolve() == b.resolve() or a.name == b.name


def _teaches(run_dir: Path, config, kd_config) -> bool:
    """Whether the teacher run ``run_dir`` is the teacher of a KD run: its folder holds the KD run's
    ``teacher.checkpoint``, or that checkpoint is a shipped teacher named after it (``teachers/<name>.pt``,
    which :func:`quickstart` evaluates into ``<name>-s0``)."""
    checkpoint = Path(kd_config.teacher.checkpoint)
    return _same_folder(run_dir, checkpoint.parent) or checkpoint.stem == config.name


def run_roles(configs: dict[Path, object]) -> dict[Path, str]:
    """``teacher``, ``scratch`` or ``kd`` for each run folder, read from the configs alone: a run with
    a KD method is ``kd``; a run without one is a ``teacher`` when its config says ``role: teacher``
    or, with no ``role``, when another run's ``teacher.checkpoint`` lies in its folder; otherwise it is
    a ``scratch`` student. The runs of one config name (its seeds) share a role."""
    pointed = [d for d in map(_teacher_dir, configs.values()) if d is not None]
    teachers = {config.name for run_dir, config in configs.items() if config.kd.method == "none" and (
        config.role == "teacher" or (config.role is None and any(_same_folder(run_dir, d) for d in pointed)))}
    return {run_dir: "kd" if config.kd.method != "none" else "teacher" if config.name in teachers else "scratch"
            for run_dir, config in configs.items()}


def read_scores(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per-utterance scores of a run's ``scores.csv``: metric -> {utterance id: value} (status ok only)."""
    path = RunDir(run_dir).scores
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = [k for k in (rows[0] if rows else {}) if f"{k}_status" in rows[0]]
    return {m: {r["id"]: float(r[m]) for r in rows if r[f"{m}_status"] == "ok"} for m in metrics}


def _student_key(config) -> tuple:
    """What makes two runs the same student: architecture and dataset."""
    model = config.model
    return (model.family, model.preset, json.dumps(model.overrides.to_dict(), sort_keys=True),
            config.data.name)


def _snr_of(config) -> dict[str, float]:
    """Test SNR by utterance id for an embedded corpus (its manifest); empty for other datasets."""
    from selib.data.embedded import EMBEDDED, snr_by_id

    if config.data.name not in EMBEDDED:
        return {}
    try:
        return snr_by_id(config.data.root or f"data/{config.data.name}")
    except (FileNotFoundError, KeyError, ValueError):
        return {}


def paired_statistics(finished: list[dict], roles: dict[Path, str], n_boot: int = 10_000,
                      seed: int = 0) -> tuple[list[dict], list[str]]:
    """Each KD student against the scratch student of the same seed, utterance by utterance.

    For every KD config, metric and test SNR (``all`` first): the mean paired difference KD − scratch
    with its bootstrap interval over seeds and utterances (:func:`selib.stats.paired_bootstrap`), and
    the share of the teacher–scratch gap it closes with its interval. The scratch student is the run
    without KD and without the teacher role that has the same seed, architecture and dataset; the
    teacher is the run holding the KD run's ``teacher.checkpoint``. Utterances are those scored ``ok``
    by every run compared. Returns the rows and notes on KD configs that could not be paired.
    """
    from selib.stats import paired_bootstrap

    by_dir = {run["dir"]: run for run in finished}
    kd_groups: dict[str, list[dict]] = {}
    for run in finished:
        if roles[run["dir"]] == "kd":
            kd_groups.setdefault(run["config"].name, []).append(run)
    rows, notes = [], []
    for name, members in kd_groups.items():
        triples = []
        for run in sorted(members, key=lambda r: r["config"].seed):
            cfg = run["config"]
            scratch = [r for r in finished if roles[r["dir"]] == "scratch" and r["config"].seed == cfg.seed
                       and _student_key(r["config"]) == _student_key(cfg)]
            teacher = next((r for d, r in by_dir.items() if roles[d] == "teacher"
                            and _teaches(d, r["config"], cfg)), None)
            if scratch:
                triples.append((run, scratch, teacher))
        candidates = sorted({r["config"].name for _, scratch, _ in triples for r in scratch})
        if len(candidates) != 1:
            notes.append(f"{name}: {'several' if candidates else 'no'} scratch students with the same seeds, "
                         f"model and data ({', '.join(candidates) or 'none'}); not paired. Keep one scratch "
                         "config per student in a report.")
            continue
        rows += _paired_rows(name, [(k, s[0], t) for k, s, t in triples], paired_bootstrap, n_boot, seed)
    return rows, notes


def paired_matrices(scores: list[tuple]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None]]:
    """``metric -> (ids, diff, gap)`` from one ``(KD, scratch, teacher or None)`` triple of
    :func:`read_scores` results per seed: the utterances scored ``ok`` by every run, the seeds ×
    utterances matrix KD − scratch and, when every seed has a teacher, teacher − scratch (else None)."""
    with_teacher = all(t is not None for *_, t in scores)
    out = {}
    for metric in [m for m in scores[0][0] if all(m in k and m in s for k, s, _ in scores)]:
        ids = set.intersection(*(set(k[metric]) & set(s[metric]) for k, s, _ in scores))
        if with_teacher:
            ids &= set.intersection(*(set(t.get(metric, {})) for *_, t in scores))
        ids = sorted(ids)
        if ids:
            diff = np.array([[k[metric][u] - s[metric][u] for u in ids] for k, s, _ in scores])
            gap = (np.array([[t[metric][u] - s[metric][u] for u in ids] for _, s, t in scores])
                   if with_teacher else None)
            out[metric] = (ids, diff, gap)
    return out


def _paired_rows(name, triples, paired_bootstrap, n_boot, seed) -> list[dict]:
    scores = [tuple(read_scores(r["dir"]) if r is not None else None for r in triple) for triple in triples]
    with_teacher = all(t is not None for *_, t in scores)
    snr = _snr_of(triples[0][0]["config"])
    rows = []
    for metric, (ids, diff, gap) in paired_matrices(scores).items():
        groups = [("all", np.arange(len(ids)))]
        groups += [(value, np.array([i for i, u in enumerate(ids) if snr.get(u) == value]))
                   for value in sorted({snr[u] for u in ids if u in snr})]
        for label, cols in groups:
            stats = paired_bootstrap(diff[:, cols], n_boot=n_boot, seed=seed)
            row = {"name": name, "scratch": triples[0][1]["config"].name,
                   "teacher": triples[0][2]["config"].name if with_teacher else None,
                   "metric": metric, "snr_db": label, "n_seeds": stats["n_seeds"],
                   "n_utterances": stats["n_utterances"], "diff_mean": stats["mean"],
                   "diff_low": stats["low"], "diff_high": stats["high"],
                   "gap_closed": math.nan, "gap_closed_low": math.nan, "gap_closed_high": math.nan}
            if gap is not None:
                share = paired_bootstrap(diff[:, cols], gap[:, cols], n_boot=n_boot, seed=seed)
                row.update(gap_closed=share["mean"], gap_closed_low=share["low"], gap_closed_high=share["high"])
            rows.append(row)
    return rows


# Columns of a KD row of report.csv (``<metric>_<column>``) and the paired row key they come from.
_PAIRED_COLUMNS = {"diff": "diff_mean", "diff_low": "diff_low", "diff_high": "diff_high",
                   "gap_closed": "gap_closed", "gap_closed_low": "gap_closed_low",
                   "gap_closed_high": "gap_closed_high"}


def report(runs, out_dir: str | Path = "runs", metrics: list[str] | None = None, n_boot: int = 10_000,
           seed: int = 0) -> list[dict]:
    """Comparison tables from run folders only (lesson ``11_results_and_deployment``).

    One row per config name: mean ± std over seeds of each test metric in ``metrics.json``, the role
    (:func:`run_roles`), the student's parameter count, the KD method and the number of seeds. KD rows
    also hold ``<metric>_diff`` (mean paired difference against the scratch student of the same seed),
    ``<metric>_diff_low``/``_high`` (its bootstrap 95 % interval over seeds and utterances) and
    ``<metric>_gap_closed`` (+ ``_low``/``_high``), from :func:`paired_statistics`, which also gives the
    per-SNR rows. Writes ``report.md``, ``report.csv`` (one row per config), ``report_paired.csv`` (one
    row per KD config, metric and SNR), ``report.json`` (all of it) and ``report.png`` to ``out_dir``;
    failed and unfinished runs are listed separately. Returns the rows of ``report.csv`` (dicts).
    """
    finished, failed, configs = _read_runs(runs)
    roles = run_roles(configs)
    groups: dict[str, list[dict]] = {}
    for run in finished:
        groups.setdefault(run["config"].name, []).append(run)
    metric_names = metrics or list(dict.fromkeys(m for run in finished for m in _metric_means(run["metrics"])))

    table = []
    for name, members in groups.items():
        config, result = members[0]["config"], members[0]["metrics"]
        row = {"name": name, "model": f"{config.model.family}/{config.model.preset}",
               "role": roles[members[0]["dir"]], "kd": config.kd.method, "data": config.data.name,
               "params": result["model"]["params"], "seeds": len(members),
               "train_seconds": _mean_std([m["metrics"]["timing"]["train_seconds"] for m in members])[0]}
        for metric in metric_names:
            values = [v[metric] for v in (_metric_means(m["metrics"]) for m in members) if metric in v]
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std(values) if values else (math.nan,) * 2
        table.append(row)
    table.sort(key=lambda r: (r["model"].split("/")[0], ["teacher", "scratch", "kd"].index(r["role"]),
                              KD_METHODS.index(r["kd"]) if r["kd"] in KD_METHODS else -1, r["name"]))
    paired, notes = paired_statistics(finished, roles, n_boot=n_boot, seed=seed)
    for row in table:
        for p in (p for p in paired if p["name"] == row["name"] and p["snr_db"] == "all"):
            row.update({f"{p['metric']}_{column}": p[key] for column, key in _PAIRED_COLUMNS.items()})

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "report.csv", table, empty_header=("name",))
    write_csv(out_dir / "report_paired.csv", paired, empty_header=("name",))
    bootstrap = {"scheme": "seeds and utterances resampled independently with replacement (crossed)",
                 "n_boot": n_boot, "seed": seed, "confidence": 0.95, "interval": "percentile"}
    write_json(out_dir / "report.json",
               {"runs": table, "paired": paired, "notes": notes, "failed": failed, "bootstrap": bootstrap})
    _write_markdown(table, paired, notes, failed, metric_names, out_dir / "report.md", n_boot)
    if table:
        _write_chart(table, metric_names, out_dir / "report.png")
    return table


def _write_markdown(table, paired, notes, failed, metric_names, path: Path, n_boot: int) -> None:
    lines = ["# Results", ""]
    if any(r["data"].startswith("embedded") for r in table):
        lines += ["Embedded corpus rows are synthetic TTS results: compare them with each other only, "
                  "never with published VoiceBank+DEMAND or DNS2020 numbers.", ""]
    header = ["run", "role", "model", "KD", "params", "seeds", "train s"] + metric_names
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        cells = [r["name"], r["role"], r["model"], r["kd"], f"{r['params']:,}", str(r["seeds"]),
                 f"{r['train_seconds']:.0f}"]
        cells += [_fmt(r.get(f"{m}_mean", math.nan), r.get(f"{m}_std", math.nan)) for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are mean ± sample standard deviation over seeds of each run's test-set mean."]
    overall = [p for p in paired if p["snr_db"] == "all"]
    if overall:
        names = list(dict.fromkeys(p["name"] for p in overall))
        shown = [m for m in metric_names if any(p["metric"] == m for p in overall)]
        lines += ["", "## KD students against the scratch student of the same seed (test split)", ""]
        header = ["run", "scratch", "seeds × utterances"] + [f"Δ {m}" for m in shown] + \
                 [f"gap closed ({m})" for m in shown]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in names:
            rows = {p["metric"]: p for p in overall if p["name"] == name}
            first = next(iter(rows.values()))
            cells = [name, first["scratch"], f"{first['n_seeds']} × {first['n_utterances']}"]
            cells += [fmt_interval(*(rows[m][k] for k in ("diff_mean", "diff_low", "diff_high")))
                      if m in rows else "—" for m in shown]
            cells += [fmt_interval(*(rows[m][k] for k in ("gap_closed", "gap_closed_low", "gap_closed_high")), 2)
                      if m in rows else "—" for m in shown]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Δ: mean over seeds and utterances of (KD student − scratch student of the same seed) on "
                  f"each test utterance, with the 95 % percentile interval of {n_boot} bootstrap replicates that "
                  "resample seeds and utterances independently (selib.stats.paired_bootstrap). Gap closed: "
                  "Δ divided by the teacher − scratch difference over the same draws (1 = the teacher's score, "
                  "— without a teacher run). An interval that excludes 0 is a difference these seeds and "
                  "utterances support."]
        for metric in shown:
            by_snr = [p for p in paired if p["metric"] == metric and p["snr_db"] != "all"]
            snrs = sorted({p["snr_db"] for p in by_snr})
            if not snrs:
                continue
            lines += ["", f"### Δ {metric} by test SNR", "",
                      "| run | " + " | ".join(f"{s:g} dB" for s in snrs) + " |", "|" + "---|" * (len(snrs) + 1)]
            for name in names:
                cells = {p["snr_db"]: p for p in by_snr if p["name"] == name}
                lines.append("| " + " | ".join([name] + [
                    fmt_interval(cells[s]["diff_mean"], cells[s]["diff_low"], cells[s]["diff_high"])
                    if s in cells else "—" for s in snrs]) + " |")
    if notes:
        lines += ["", "## Not paired", ""] + [f"- {n}" for n in notes]
    if failed:
        lines += ["", "## Failed or unfinished runs", ""]
        lines += [f"- `{f['run_dir']}`: {f['reason']} (log: `{f['log']}`)" for f in failed]
    path.write_text("\n".join(lines) + "\n")


def _write_chart(table, metric_names, path: Path) -> None:
    from matplotlib.figure import Figure  # not pyplot: leaves the caller's backend alone

    from selib import plots

    paired = [m for m in metric_names if any(math.isfinite(r.get(f"{m}_diff", math.nan)) for r in table)]
    fig = Figure(figsize=(4.5 * len(metric_names), 3.8 * (1 + bool(paired))), layout="constrained")
    axes = fig.subplots(1 + bool(paired), len(metric_names), squeeze=False)
    for ax, metric in zip(axes[0], metric_names):
        plots.result_chart(table, metric, ax=ax)
    for ax, metric in zip(axes[1] if paired else [], metric_names):
        if metric in paired:
            plots.result_chart(table, metric, ax=ax, paired=True)
        else:
            ax.set_axis_off()
    fig.savefig(path, dpi=110)
