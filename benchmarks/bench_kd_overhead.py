"""Cost of one student training step per KD method: DPDCRN tiny and paper presets (issue 12).

For each preset pair (student ``<preset>-student``, frozen teacher ``<preset>-teacher``, freshly
initialised: weights do not change the cost) and each method ``none``, ``logits-sisnr``, ``dfkd`` and
``i2s-tfckd`` (default options, except I²S-TFCKD's ``mid_channels: 32`` on the tiny pair, as in
``configs/course/dpdcrn-tiny-i2s.yaml``), the distiller is built by ``selib.kd.build`` with the
arguments ``selib.train`` gives it, and one step runs the sequence of ``Trainer._train_step``: the
teacher's output without gradient (with its features for feature KD; no teacher cache), the student's
forward (with features when the distiller needs them), ``Distiller.split`` / ``combine``, backward,
gradient clipping at 5 and an Adam step over the student's and the distiller's own parameters.

The methods alternate in rounds in one process (a loaded machine slows them alike), after ``--warmup``
steps of each; the script prints the median step time of ``--repeats`` rounds, the share of it spent in
the teacher's forward, and the ratios DFKD / logit (target <= 1.15) and I²S-TFCKD / logit (target
<= 1.6), also without the teacher's forward (what output-level KD pays with a warm teacher cache; the
feature KD of I²S-TFCKD cannot use the cache). One JSON line per preset pair is appended to
``benchmarks/results/kd_overhead.jsonl``; ``--write`` puts the latest line of each pair into
benchmarks/RESULTS.md. ``benchmarks/bench_kd_cache.py`` measures whole epochs with
and without the teacher cache instead.

Run: ``OMP_NUM_THREADS=2 nice .venv/bin/python benchmarks/bench_kd_overhead.py [--repeats 5] [--write]``
(tiny: batch 4 x 1 s as the course configs; paper: ``--paper-batch`` x ``--paper-seconds``, by
default 4 x 4 s, half the batch of ``configs/paper/vb-dpdcrn-*.yaml``; the figures in
benchmarks/RESULTS.md used ``--paper-seconds 1``, 90 s on the idle machine). Per-step times go to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import results_md
import torch
from torch import nn

from selib import kd, models

RATE = 16000
METHODS = ("none", "logits-sisnr", "dfkd", "i2s-tfckd")
TARGETS = {"dfkd": 1.15, "i2s-tfckd": 1.6}
RESULTS = Path(__file__).with_name("results") / "kd_overhead.jsonl"


class Step:
    """One KD method's training step on a fixed batch, timed as a whole and in its teacher part."""

    def __init__(self, method: str, student: nn.Module, teacher: nn.Module, noisy: torch.Tensor,
                 clean: torch.Tensor, options: dict, grad_clip: float = 5.0):
        self.student, self.teacher, self.noisy, self.clean, self.grad_clip = student, teacher, noisy, clean, grad_clip
        self.distiller = kd.build(method, student, teacher if method != "none" else None, weight=1.0,
                                  options=options, se_loss="sisnr", batch_size=noisy.shape[0],
                                  segment_samples=noisy.shape[-1])
        frozen = {id(p) for p in student.parameters()} | {id(p) for p in teacher.parameters()}
        self.params = list(student.parameters()) + [p for p in self.distiller.parameters()
                                                    if p.requires_grad and id(p) not in frozen]
        self.own_params = len(self.params) - len(list(student.parameters()))
        self.optimizer = torch.optim.Adam(self.params, lr=1e-4)
        self.uses_teacher = method != "none"

    def __call__(self) -> tuple[float, float]:
        """(seconds of the whole step, seconds of the teacher's forward in it)."""
        self.student.train()
        self.distiller.train()
        started = time.perf_counter()
        teacher_out = teacher_features = None
        if self.uses_teacher:
            with torch.no_grad():
                if self.distiller.needs_features:
                    teacher_out, teacher_features = self.teacher(self.noisy, return_features=True)
                else:
                    teacher_out = self.teacher(self.noisy)
        teacher_s = time.perf_counter() - started
        student_features = None
        if self.distiller.needs_features:
            out, student_features = self.student(self.noisy, return_features=True)
        else:
            out = self.student(self.noisy)
        se, kd_loss, _ = self.distiller.split(out, self.clean, self.noisy, teacher_out=teacher_out,
                                              student_features=student_features,
                                              teacher_features=teacher_features)
        loss = self.distiller.combine(se, kd_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return time.perf_counter() - started, teacher_s


def measure(preset: str, batch: int, seconds: float, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    student = models.build("dpdcrn", f"{preset}-student")
    teacher = models.build("dpdcrn", f"{preset}-teacher").eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    clean = 0.1 * torch.randn(batch, int(seconds * RATE), generator=gen)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    options = {"i2s-tfckd": {"mid_channels": 32}} if preset == "tiny" else {}
    steps = {}
    for method in METHODS:
        torch.manual_seed(0)
        steps[method] = Step(method, student, teacher, noisy, clean, options.get(method, {}))
    # every method trains the same student: reset it so that each starts from the same weights
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    student.load_state_dict(initial)
    times = {m: [] for m in METHODS}
    teacher = {m: [] for m in METHODS}
    for _ in range(repeats):
        for method, step in steps.items():
            total, t = step()
            times[method].append(total)
            teacher[method].append(t)
            print(f"    ({preset} {method}: {total:.2f} s, teacher {t:.2f} s)", file=sys.stderr, flush=True)
    return {"preset": preset, "batch": batch, "seconds": seconds, "repeats": repeats,
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in steps["none"].teacher.parameters()),
            "distiller_params": {m: sum(p.numel() for p in s.params[-s.own_params:]) if s.own_params else 0
                                 for m, s in steps.items()},
            "step_s": {m: statistics.median(v) for m, v in times.items()},
            "teacher_s": {m: statistics.median(v) for m, v in teacher.items()},
            "all_step_s": times}


def report(row: dict) -> None:
    step, teacher = row["step_s"], row["teacher_s"]
    print(f"\nDPDCRN {row['preset']}-student ({row['student_params'] / 1e6:.3f} M) with {row['preset']}-teacher "
          f"({row['teacher_params'] / 1e6:.3f} M), batch {row['batch']} x {row['seconds']:g} s, median of "
          f"{row['repeats']} steps:")
    print(f"  {'method':14s} {'step s':>8s} {'teacher s':>10s} {'teacher share':>14s} {'x none':>7s} "
          f"{'x logit':>8s} {'x logit w/o teacher':>20s} {'KD params':>10s}")
    logit, logit_student = step["logits-sisnr"], step["logits-sisnr"] - teacher["logits-sisnr"]
    for m in METHODS:
        print(f"  {m:14s} {step[m]:8.3f} {teacher[m]:10.3f} {teacher[m] / step[m]:14.0%} "
              f"{step[m] / step['none']:7.2f} {step[m] / logit:8.2f} {(step[m] - teacher[m]) / logit_student:20.2f} "
              f"{row['distiller_params'][m]:10,d}")
    for m, target in TARGETS.items():
        ratio = step[m] / logit
        verdict = "meets" if ratio <= target else "MISSES"
        print(f"  {m} / logits-sisnr = {ratio:.2f} (target <= {target}): {verdict} the target")


def markdown(records: dict[tuple, dict]) -> str:
    """The latest record of each preset pair as RESULTS.md's table: step times, ratios, targets."""
    rows, runs = [], []
    for r in sorted(records.values(), key=lambda r: r["preset"] != "tiny"):   # tiny first
        preset, step, teacher = r["preset"], r["step_s"], r["teacher_s"]
        logit, logit_student = step["logits-sisnr"], step["logits-sisnr"] - teacher["logits-sisnr"]
        for m in METHODS:
            ratio = f"{step[m] / logit:.2f}"
            rows.append([preset, m, f"{step[m]:.3f}", "–" if m == "none" else f"{100 * teacher[m] / step[m]:.0f} %",
                         f"{step[m] / step['none']:.2f}", f"**{ratio}**" if m in TARGETS else ratio,
                         "" if m == "none" else f"{(step[m] - teacher[m]) / logit_student:.2f}",
                         f"≤ {TARGETS[m]}" if m in TARGETS else "",
                         results_md.verdict(step[m] / logit, TARGETS[m]) if m in TARGETS else ""])
        runs.append(f"{preset}: batch {r['batch']} x {r['seconds']:g} s, median of {r['repeats']} steps, recorded "
                    f"{r['time']} (load average {r['load_average']:.1f} at the end)")
    return (f"The latest line of each pair in `results/kd_overhead.jsonl` ({'; '.join(runs)}).\n\n"
            + results_md.table(["pair", "method", "step s", "teacher forward", "× none", "× logit",
                                "× logit without the teacher", "target", ""], rows, "llrrrrrrl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--presets", nargs="+", choices=("tiny", "paper"), default=("tiny", "paper"))
    parser.add_argument("--tiny-batch", type=int, default=4)
    parser.add_argument("--tiny-seconds", type=float, default=1.0)
    parser.add_argument("--paper-batch", type=int, default=4)
    parser.add_argument("--paper-seconds", type=float, default=4.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    results_md.add_options(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), load average {os.getloadavg()[0]:.1f} at the start")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for preset in args.presets:     # one JSON line as soon as a preset is done
        batch, seconds = ((args.tiny_batch, args.tiny_seconds) if preset == "tiny"
                          else (args.paper_batch, args.paper_seconds))
        row = measure(preset, batch, seconds, args.repeats, args.warmup)
        report(row)
        load = os.getloadavg()
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        ratios = {m: row["step_s"][m] / row["step_s"]["logits-sisnr"] for m in TARGETS}
        with args.results.open("a") as out:
            out.write(json.dumps({"time": stamp, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "cpus": os.cpu_count(), "load_average": load[0], **row,
                                  "ratio_to_logit": ratios, "targets": TARGETS}) + "\n")
        print(f"  appended to {args.results}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
              f"{time.perf_counter() - started:.0f} s so far")
    if args.write:
        results_md.write_section(__file__, markdown(results_md.latest(args.results, "preset")), args.results_md)


if __name__ == "__main__":
    main()
