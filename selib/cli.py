"""The ``selib`` command line (also ``python -m selib``, and ``torchrun -m selib train`` for DDP); ``selib COMMAND --help`` explains each command.

Mistakes in what the user passed (a bad audio file, a bad config, a missing dataset) are printed as
one line on stderr and exit with status 2, without a traceback. Lesson ``11_results_and_deployment``
uses ``enhance``, ``run`` and ``report``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selib.constants import DATASETS, SPLITS
from selib.runs import RunDir


def _overrides(items: list[str] | None) -> dict:
    from selib.config import parse_overrides

    return parse_overrides(items or [])


def cmd_data(args) -> None:
    from selib import data
    from selib.data.embedded import EMBEDDED

    corpus = args.name or "embedded"
    root = args.root or f"data/{corpus}"
    if args.action in ("build", "verify") and corpus not in EMBEDDED:
        raise ValueError(f"selib data {args.action} works on the embedded corpora {sorted(EMBEDDED)}, not "
                         f"{corpus}: downloads are verified as archives when fetched.")
    if args.action == "build":
        print(data.build_embedded(root, seed=args.seed, **EMBEDDED[corpus]))
    elif args.action == "verify":
        from selib.data.embedded import verify_embedded

        checked, problems = verify_embedded(root)
        for line in problems:
            print(line)
        print(f"{root}: {checked - len(problems)} of {checked} files match the manifest"
              + (f"; rebuild the corpus (delete {Path(root) / 'manifest.json'}, then selib data build {corpus})"
                 if problems else ""))
        if problems:
            raise SystemExit(1)
    elif args.action == "list":
        from selib.data.catalogue import describe

        for name in EMBEDDED:
            folder = Path(args.root or f"data/{name}")
            print(f"{name}: an offline corpus (selib data build {name}); built at "
                  f"{folder}: {'yes' if (folder / 'manifest.json').is_file() else 'no'}")
        print("\n".join(describe()))
    else:
        from selib.data.download import download

        if not args.name:
            raise ValueError("data download needs a dataset name, e.g. selib data download voicebank")
        print(download(args.name, args.dest))


def cmd_train(args) -> None:
    from selib import config, train

    cfg = config.load(args.config, _overrides(args.set))
    if args.dry_run:
        from selib.profile import dry_run

        p = dry_run(cfg)
        print(f"{p['device']}: {p['step_seconds']:.3f} s per training step (median of {p['steps_timed']} "
              f"after a warm-up step), peak memory {p['peak_memory_bytes'] / 2**30:.2f} GiB")
        print(f"projected: {p['epoch_seconds'] / 60:.1f} min per epoch ({p['batches_per_epoch']} batches), "
              f"{p['run_seconds'] / 3600:.2f} h for the run ({p['total_steps']} steps, validation not "
              "included); nothing was trained or written")
        return
    run_dir = Path(args.run_dir) if args.run_dir else RunDir.of(cfg).path
    result = train.run(cfg, run_dir, test=not args.no_test)
    if result:
        _print_summary(result["summary"])
        print(f"run folder: {run_dir}")


def _print_summary(summary: dict) -> None:
    for metric, stats in summary.items():
        print(f"{metric:>8}: {stats['mean']:.3f} ± {stats['std']:.3f} (n={stats['n_ok']}/{stats['n_total']})")


def cmd_eval(args) -> None:
    from selib import data
    from selib.checkpoints import load_model
    from selib.evaluation import enhance_and_score, validate_metrics

    if args.metrics:
        validate_metrics(args.metrics)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: must be at least 1.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be at least 1.")
    model, cfg = load_model(args.checkpoint)
    name = args.data or cfg["data"]["name"]
    root = args.root or (cfg["data"]["root"] if name == cfg["data"]["name"] else None)
    dataset = data.get_dataset(name, args.split, root=root, limit=args.limit)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{name}-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    files = RunDir(out)      # the scores and summary go by the names a run folder gives them
    result, _ = enhance_and_score(model, dataset, args.metrics or cfg["eval"]["metrics"],
                                  workers=args.workers, csv_path=files.scores, json_path=files.metrics)
    _print_summary(result.summary)
    failed = [row["id"] for row in result.rows if row[f"{result.metrics[0]}_status"] in
              ("unreadable", "nonfinite_output")]
    if failed:
        print(f"{len(failed)} utterance(s) not scored (first: {failed[0]}); their reasons are in scores.csv",
              file=sys.stderr)
    print(f"scores: {out / 'scores.csv'}")


def cmd_enhance(args) -> None:
    import torch

    from selib import audio
    from selib.checkpoints import load_model
    from selib.inference import ModelOutputError, enhance

    audio.check_output_path(args.output, source=args.input, overwrite=args.overwrite)
    model, _ = load_model(args.checkpoint)          # a bad checkpoint costs no audio reading
    noisy = audio.load(args.input, mix_down=args.mix_down)
    try:
        if args.stream:
            from selib.streaming import stream

            with torch.no_grad():
                enhanced = stream(model, noisy[None])[0]
        else:
            enhanced = enhance(model, noisy)
    except ModelOutputError as err:
        raise ModelOutputError(f"{args.checkpoint}: {err} (input {args.input}; nothing was written)") from None
    clipped = int((enhanced > 1.0).sum() + (enhanced < -1.0).sum())      # no float copies of a long file
    if clipped:
        print(f"{clipped} samples beyond full scale were clipped to [-1, 1] in {args.output}", file=sys.stderr)
    print(audio.save(args.output, enhanced.clamp_(-1.0, 1.0)))


def cmd_export(args) -> None:
    from selib.checkpoints import load_model
    from selib.export import ONNX_OPSET, export_files

    model, _ = load_model(args.checkpoint)
    result = export_files(model, args.out)
    print(f"torch.export: {result['torch.export']}")
    print(f"ONNX (opset {ONNX_OPSET}): {result['onnx']}")
    for name, diffs in result["max_abs_diff"].items():
        print(f"max |{name} - eager|: " + ", ".join(f"{d:.1e} at {n} samples" for n, d in diffs.items()))


def cmd_run(args) -> None:
    from selib import runner

    results = runner.run_configs(args.configs, args.runs_root, args.seeds, _overrides(args.set),
                                      args.workers)
    if any(r["status"] == "failed" for r in results):
        raise SystemExit(1)


def cmd_report(args) -> None:
    from selib.report import report

    report(args.runs, args.out)
    print(Path(args.out, "report.md").read_text())


def cmd_teachers(args) -> None:
    from selib.course import teachers

    configs = [Path(c) for c in args.configs] or sorted(teachers.CONFIGS.glob("*.yaml"))
    if not configs:
        raise FileNotFoundError(f"{teachers.CONFIGS}: no teacher configs (*.yaml); pass CONFIG paths.")
    for config in configs:
        record = teachers.ship(config, args.out, args.runs_root, _overrides(args.set))
        print(f"{Path(args.out) / record['checkpoint']}: sha256 {record['sha256'][:16]}..., valid SI-SDR "
              f"{record['valid']['si_sdr']:.3f} dB on {record['valid']['n_utterances']} utterances", flush=True)


def cmd_profile(args) -> None:
    from selib import profile

    print(profile.format_table(profile.profile_table()))


def cmd_quickstart(args) -> None:
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: must be at least 1.")
    from selib.course.quickstart import quickstart

    quickstart(args.runs_root, args.seeds, args.data_root, results=args.results, jobs=args.jobs)


def cmd_regimes(args) -> None:
    from selib.course.regimes import run_grid

    command = "selib regimes " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["regimes"] else [args.grid])
    result = run_grid(args.grid, args.runs_root, args.results, args.jobs, _overrides(args.set),
                      args.summary_only, command)
    if result["failed"]:
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selib", description="Knowledge distillation for speech "
                                     "enhancement: data, training, evaluation, experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="build the embedded corpus, list or download datasets",
                       description="build: make the offline embedded corpus; list: the datasets selib "
                       "knows; download NAME: fetch and verify a public dataset; verify: check the "
                       "embedded corpus files against the SHA-256 in its manifest.")
    p.add_argument("action", choices=["build", "list", "download", "verify"])
    p.add_argument("name", nargs="?", help="dataset to download (voicebank, dns2020, ...), or to build or verify "
                   "(embedded, the default, or embedded-room)")
    p.add_argument("--root", default=None, help="embedded corpus folder (default data/<name>)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default %(default)s)")
    p.add_argument("--dest", default="data", help="download destination (default %(default)s)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train (and test) one config",
                       description="Train the config's model, then evaluate best.pt on the test split.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--run-dir", help="run folder (default runs/<name>-s<seed>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.epochs=1 (repeatable)")
    p.add_argument("--no-test", action="store_true", help="fit only; skip the test split")
    p.add_argument("--dry-run", action="store_true",
                   help="time a few steps on this device, print the projected time per epoch and for the "
                   "run, and exit without training or writing anything")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split",
                       description="Enhance a split with a checkpoint's model and score it.")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint config's)")
    p.add_argument("--limit", type=int, help="evaluate only the first N utterances")
    p.add_argument("--metrics", nargs="+", help="metrics (default: the config's eval.metrics)")
    p.add_argument("--workers", type=int, default=None, help="metric processes")
    p.add_argument("--out", help="folder for scores.csv and metrics.json")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("enhance", help="enhance one audio file",
                       description="Enhance IN (any sample rate) with a checkpoint; writes OUT at 16 kHz.")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("input", metavar="IN.wav")
    p.add_argument("output", metavar="OUT.wav")
    p.add_argument("--mix-down", action="store_true", help="average the channels of a multi-channel file")
    p.add_argument("--overwrite", action="store_true", help="allow OUT to be IN (replaces the input)")
    p.add_argument("--stream", action="store_true",
                   help="enhance frame by frame as a real-time system would (causal models only)")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("export", help="export a checkpoint's model with torch.export and to ONNX",
                       description="Write student.pt2 (torch.export) and student.onnx (onnxruntime) with "
                       "dynamic batch and time axes, and compare both with the eager model.")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--out", default="deploy", help="output folder (default %(default)s)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run configs with papermill over seeds",
                       description="Execute notebooks/runs/train.ipynb per (config, seed) into "
                       "<runs-root>/<name>-s<seed>/; finished runs are skipped, failures reported.")
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--workers", type=int, default=1, help="runs at once (default %(default)s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="compare finished runs",
                       description="Table of mean ± std over seeds per config and, for each KD student, "
                       "paired differences against the scratch student of the same seed with bootstrap "
                       "intervals (overall and per test SNR), from run folders only.")
    p.add_argument("runs", nargs="+", metavar="RUNS", help="run folders, globs or a runs root")
    p.add_argument("--out", default="runs", help="folder for report.md/csv/json/png (default %(default)s)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("teachers", help="train the shipped course teachers and record them",
                       description="Train configs/teachers/*.yaml (or the CONFIGs given) and write "
                       "<out>/<name>.pt with <out>/<name>.json (SHA-256, config, command, validation SI-SDR).")
    p.add_argument("configs", nargs="*", metavar="CONFIG", help="teacher configs (default configs/teachers/*.yaml)")
    p.add_argument("--out", default="teachers", help="folder for the checkpoints and records (default %(default)s)")
    p.add_argument("--runs-root", default="runs/teachers", help="where the runs train (default %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every teacher")
    p.set_defaults(func=cmd_teachers)

    p = sub.add_parser("profile", help="parameters, MACs and real-time factor of every preset",
                       description="Profile every model preset on 1 s of audio.")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("quickstart", help="the course comparison on the embedded corpus",
                       description="Build the embedded corpus, score the shipped course teachers (teachers/; "
                       "trained first when missing), train the configs/course students for each seed and "
                       "write <runs-root>/report.md.")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--data-root", default="data/embedded")
    p.add_argument("--jobs", type=int, default=1, help="students trained at once, in worker processes "
                   "that share the CPU threads (make quickstart: 2)")
    p.add_argument("--results", help="also copy the report files here (make quickstart: "
                   "benchmarks/results/quickstart)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("regimes", help="when does distillation help: run and summarise a regime grid",
                       description="Expand GRID.yaml (configs/regimes/; docs/regimes.md) into one run per "
                       "(family, cell, method or scratch, seed), train the unfinished ones (resumable) and "
                       "write summary.json/.md, map.png and curves.png.")
    p.add_argument("grid", metavar="GRID.yaml")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process (default %(default)s)")
    p.add_argument("--runs-root", help="run folders (default runs/regimes/<grid name>)")
    p.add_argument("--results", help="summary folder (default benchmarks/results/regimes/<grid name>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run, e.g. "
                   "data.root=/tmp/embedded (repeatable)")
    p.add_argument("--summary-only", action="store_true", help="train nothing; summarise the finished runs")
    p.set_defaults(func=cmd_regimes)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; what the user got wrong is one line on stderr (exit 2), a diverged training
    run exits 1, and only bugs keep their traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RuntimeError as err:
        from selib.data.download import DownloadError    # here, not above: selib.data imports torch, which
        from selib.train import TrainingDiverged         # `selib quickstart --jobs 2` leaves to its workers

        if not isinstance(err, (TrainingDiverged, DownloadError)):  # a bug: keep its traceback
            raise
        print(f"selib {args.command}: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, TrainingDiverged) else 2
    except ValueError as err:  # AudioError, ConfigError, CheckpointError: ValueErrors
        print(f"selib {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing files, full disks, read-only folders, permissions
        print(f"selib {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selib {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _os_error(err: OSError) -> str:
    """One line for an OSError: the path, the system's reason and what to do."""
    import errno

    if err.filename is None or isinstance(err, FileNotFoundError) and not err.strerror:
        return str(err)
    fixes = {errno.ENOSPC: "free some disk space or write elsewhere",
             errno.EACCES: "check the permissions or write elsewhere",
             errno.EPERM: "check the permissions or write elsewhere",
             errno.EROFS: "the file system is read-only: write elsewhere",
             errno.EFBIG: "the file system refused the file's size: free some space or write elsewhere",
             errno.ENOENT: "check the path", errno.EISDIR: "give a file name, not a folder",
             errno.ENOTDIR: "a part of the path is a file, not a folder"}
    fix = fixes.get(err.errno, "check the path")
    return f"{err.filename}: {err.strerror}; {fix}."
