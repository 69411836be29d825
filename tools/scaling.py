"""Scaling curves at convergence: how far does model size carry on a task, once every size has trained long
enough? (docs/validation-log.md, "Scaling at convergence").

    python tools/scaling.py train [--workers 2]   # selib run configs/scaling/*.yaml into runs/scaling/ (resumes)
    python tools/scaling.py summary               # benchmarks/results/scaling/scaling.{json,md,png}

Each config in ``configs/scaling/`` is one (task, family, size) trained from scratch. The summary reads the
run folders only: the validation SI-SDR curve, the best validation score (what ``best.pt`` was chosen on),
the test scores of ``best.pt`` (``metrics.json``), and whether the curve was flat at the end: the best
score of the last third of the steps minus the best before it (``last_third_gain_db``; below 0.1 dB reads
as converged). Run folders still training are summarised as far as they got and marked unfinished.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs/scaling"
RUNS = REPO / "runs/scaling"
OUT = REPO / "benchmarks/results/scaling"
FLAT_DB = 0.1


def train(workers: int) -> int:
    """Train every scaling config not yet finished (``selib run`` skips finished runs, resumes the rest)."""
    configs = sorted(str(p) for p in CONFIGS.glob("*.yaml"))
    return subprocess.call([sys.executable, "-m", "selib", "run", *configs, "--runs-root", str(RUNS),
                            "--workers", str(workers)], cwd=REPO)


def run_summary(config_path: Path) -> dict | None:
    """One row of the summary from a config and its run folder (None before the first validation)."""
    from selib import config as configs
    from selib.models import build

    cfg = configs.load(config_path)
    folder = RUNS / f"{cfg.name}-s{cfg.seed}"
    history_path = folder / "history.json"
    if not history_path.is_file():
        return None
    curve = [(h["step"], h["valid_si_sdr"]) for h in json.loads(history_path.read_text())
             if h.get("valid_si_sdr") is not None]
    if not curve:
        return None
    steps = cfg.optim.max_steps
    cut = steps * 2 / 3
    early = [v for s, v in curve if s <= cut]
    late = [v for s, v in curve if s > cut]
    metrics_path = folder / "metrics.json"
    summary = json.loads(metrics_path.read_text())["summary"] if metrics_path.is_file() else {}
    test = {metric: scores["mean"] for metric, scores in summary.items()}
    model = build(cfg.model.family, cfg.model.preset, **cfg.model.overrides)
    return {"name": cfg.name, "task": cfg.data.name, "family": cfg.model.family,
            "params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "finished": curve[-1][0] >= steps and metrics_path.is_file(),
            "curve": [{"step": s, "valid_si_sdr": round(v, 4)} for s, v in curve],
            "best_valid_si_sdr": round(max(v for _, v in curve), 4),
            "last_third_gain_db": round(max(late) - max(early), 4) if late and early else None,
            "test": {k: round(float(v), 4) for k, v in test.items()},
            "config": str(config_path.relative_to(REPO))}


def summary() -> list[dict]:
    rows = [r for r in (run_summary(p) for p in sorted(CONFIGS.glob("*.yaml"))) if r is not None]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    (OUT / "scaling.md").write_text(_markdown(rows))
    _figure(rows, OUT / "scaling.png")
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = ["| task | family | params | steps | best valid SI-SDR | gain in the last third | test SI-SDR | "
             "test PESQ-WB | state |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["task"], r["family"], r["params"])):
        gain = r["last_third_gain_db"]
        state = ("unfinished" if not r["finished"] else
                 "flat" if gain is not None and gain < FLAT_DB else "still rising")
        test = r["test"]
        lines.append(f"| {r['task']} | {r['family']} | {r['params']:,} | {r['steps']} | "
                     f"{r['best_valid_si_sdr']:.2f} | {'' if gain is None else f'{gain:+.2f}'} | "
                     f"{test.get('si_sdr', float('nan')):.2f} | {test.get('pesq_wb', float('nan')):.3f} | {state} |")
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["task"], r["family"]) for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for task, family in groups:
        mine = sorted((r for r in rows if (r["task"], r["family"]) == (task, family)), key=lambda r: r["params"])
        axes[0].plot([r["params"] for r in mine], [r["best_valid_si_sdr"] for r in mine], "o-",
                     label=f"{family}, {task}")
        for r in mine:
            axes[1].plot([c["step"] for c in r["curve"]], [c["valid_si_sdr"] for c in r["curve"]],
                         label=f"{family} {r['params']:,}, {task}")
    axes[0].set(xscale="log", xlabel="parameters", ylabel="best validation SI-SDR (dB)",
                title="size at convergence")
    axes[1].set(xlabel="step", ylabel="validation SI-SDR (dB)", title="validation curves")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["train", "summary"])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.action == "train":
        return train(args.workers)
    for row in summary():
        print(f"{row['name']}: {row['params']:,} parameters, best valid {row['best_valid_si_sdr']:.2f} dB"
              f"{'' if row['finished'] else ' (unfinished)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
