"""The ``selib`` command line (also ``python -m selib``); ``selib COMMAND --help`` explains each command.

Mistakes in what the user passed (a bad audio file, a bad config, a missing dataset) are printed as
one line on stderr and exit with status 2, without a traceback. Lesson ``11_results_and_deployment``
uses ``enhance``, ``run`` and ``report``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _overrides(items: list[str] | None) -> dict:
    from selib.config import parse_overrides

    return parse_overrides(items or [])


def cmd_data(args) -> None:
    from selib import data

    if args.action == "build":
        print(data.build_embedded(args.root, seed=args.seed))
    elif args.action == "list":
        from selib.data.download import describe

        print("embedded: the offline corpus (selib data build); built at "
              f"{args.root}: {'yes' if (Path(args.root) / 'manifest.json').is_file() else 'no'}")
        print("\n".join(describe()))
    else:
        from selib.data.download import download

        if not args.name:
            raise ValueError("data download needs a dataset name, e.g. selib data download voicebank")
        print(download(args.name, args.dest))


def cmd_train(args) -> None:
    from selib import config, train

    cfg = config.load(args.config, _overrides(args.set))
    run_dir = Path(args.run_dir) if args.run_dir else cfg.run_dir()
    result = train.run(cfg, run_dir)
    _print_summary(result["summary"])
    print(f"run folder: {run_dir}")


def _print_summary(summary: dict) -> None:
    for metric, stats in summary.items():
        print(f"{metric:>8}: {stats['mean']:.3f} ± {stats['std']:.3f} (n={stats['n_ok']}/{stats['n_total']})")


def cmd_eval(args) -> None:
    import torch

    from selib import data, metrics
    from selib.experiments import load_model

    model, cfg = load_model(args.checkpoint)
    name = args.data or cfg["data"]["name"]
    root = args.root or (cfg["data"]["root"] if name == cfg["data"]["name"] else None)
    dataset = data.get_dataset(name, args.split, root=root, limit=args.limit)

    def items():
        with torch.no_grad():
            for i in range(len(dataset)):
                item = dataset[i]
                enhanced = model(item["noisy"][None])[0]
                yield item["id"], enhanced.numpy(), item["clean"].numpy()

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{name}-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    result = metrics.evaluate(list(items()), metrics=tuple(args.metrics or cfg["eval"]["metrics"]),
                              workers=args.workers, csv_path=out / "scores.csv",
                              json_path=out / "metrics.json")
    _print_summary(result.summary)
    print(f"scores: {out / 'scores.csv'}")


def cmd_enhance(args) -> None:
    import torch

    from selib import audio
    from selib.experiments import load_model

    noisy = audio.load(args.input, mix_down=args.mix_down)
    model, _ = load_model(args.checkpoint)
    with torch.no_grad():
        enhanced = model(noisy[None])[0]
    print(audio.save(args.output, enhanced.clamp(-1.0, 1.0)))


def cmd_run(args) -> None:
    from selib import experiments

    results = experiments.run_configs(args.configs, args.runs_root, args.seeds, _overrides(args.set),
                                      args.workers)
    if any(r["status"] == "failed" for r in results):
        raise SystemExit(1)


def cmd_report(args) -> None:
    from selib import experiments

    experiments.report(args.runs, args.out)
    print(Path(args.out, "report.md").read_text())


def cmd_teachers(args) -> None:
    from selib import teachers

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
    from selib import experiments

    experiments.quickstart(args.runs_root, args.seeds, args.data_root, results=args.results)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selib", description="Knowledge distillation for speech "
                                     "enhancement: data, training, evaluation, experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("data", help="build the embedded corpus, list or download datasets",
                       description="build: make the offline embedded corpus; list: the datasets selib "
                       "knows; download NAME: fetch and verify a public dataset.")
    p.add_argument("action", choices=["build", "list", "download"])
    p.add_argument("name", nargs="?", help="dataset to download (voicebank, dns2020, ...)")
    p.add_argument("--root", default="data/embedded", help="embedded corpus folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default %(default)s)")
    p.add_argument("--dest", default="data", help="download destination (default %(default)s)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train (and test) one config",
                       description="Train the config's model, then evaluate best.pt on the test split.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("--run-dir", help="run folder (default runs/<name>-s<seed>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.epochs=1 (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split",
                       description="Enhance a split with a checkpoint's model and score it.")
    p.add_argument("checkpoint", help="best.pt or last.pt of a run")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--data", choices=["embedded", "voicebank", "dns2020"],
                   help="dataset (default: the one the checkpoint was trained on)")
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
    p.set_defaults(func=cmd_enhance)

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
    p.add_argument("--results", help="also copy the report files here (make quickstart: "
                   "benchmarks/results/quickstart)")
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from selib.data.download import DownloadError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, DownloadError) as err:  # AudioError, ConfigError: ValueErrors
        print(f"selib {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from selib.train import TrainingDiverged

        if not isinstance(err, TrainingDiverged):  # a bug: keep its traceback
            raise
        print(f"selib {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0
