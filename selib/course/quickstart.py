"""The quick start: what ``make quickstart`` (``selib quickstart``) runs (lesson
``11_results_and_deployment`` reads its report)."""
from __future__ import annotations

from pathlib import Path

from selib.course import teachers
from selib.report import report
from selib.runner import execute, workers
from selib.runs import RunDir, run_name

COURSE_CONFIGS = teachers.REPO_ROOT / "configs" / "course"


def quickstart(runs_root: str | Path = "runs", seeds=(0, 1, 2), data_root: str | Path = "data/embedded",
               configs_dir: str | Path = COURSE_CONFIGS, results: str | Path | None = None,
               jobs: int = 1) -> list[dict]:
    """What ``make quickstart`` runs: build the embedded corpus, score the course teachers, train every
    course student config for each seed, then print and write the report to ``<runs_root>/report.md``
    (and copy the ``report*`` files to ``results``, e.g. ``benchmarks/results/quickstart``, with the
    weights of the first seed's students in ``results/models``).

    The students' teachers are shipped checkpoints (``teacher.checkpoint: teachers/<name>.pt`` with its
    record ``<name>.json``; :mod:`selib.course.teachers`); a missing one is trained first from
    ``configs/teachers/<name>.yaml``. Each teacher is scored on the test split, with the config of its
    record, into ``<name>-s0``: the run folder the report takes as the teacher row. The students train
    in process (:func:`selib.runner.execute`, ``via="process"``), into the same run folders ``selib run`` writes
    (without the executed notebook: a papermill kernel per run would add seconds and memory to each
    run): one after another, or with ``jobs > 1`` that many at once in worker processes, each with an
    equal share of the CPU threads (tiny models use one thread poorly, so two one-thread runs on two
    cores finish sooner than two two-thread runs in turn). A failed run leaves a ``FAILED`` file and the
    others go on; finished runs are skipped, so an interrupted quick start resumes.
    """
    import shutil

    runs_root, data_override = Path(runs_root), {"data.root": str(data_root)}
    configs = sorted(Path(configs_dir).glob("*.yaml"))
    if not configs:
        raise FileNotFoundError(f"{configs_dir}: no course configs (*.yaml) found.")
    with workers(jobs) as run_all:     # with jobs > 1, torch is imported by the fork server only
        print(f"corpus: {run_all(_build_corpus, [str(data_root)])[0]}", flush=True)
        students, checkpoints = run_all(_plan, [(configs, seeds, data_override)])[0]
        run_all(_ship_teacher, [(c, runs_root / "teachers", data_override) for c in checkpoints if not c.is_file()])
        scored = run_all(_teacher_config, [(c, data_override) for c in checkpoints])
        run_all(_run, [(cfg, runs_root, c) for cfg, c in zip(scored, checkpoints)]
                + [(cfg, runs_root, None) for cfg in students])
        if results is not None:
            run_all(_ship_students, [(students, seeds[0], runs_root, Path(results) / "models")])
    table = report(runs_root, runs_root)
    print((runs_root / "report.md").read_text(), flush=True)
    if results is not None:
        Path(results).mkdir(parents=True, exist_ok=True)
        for path in sorted(runs_root.glob("report*")):
            shutil.copy2(path, Path(results) / path.name)
    return table


def _ship_students(job: tuple[list[dict], int, Path, Path]) -> None:
    """The weights of every student of ``seed`` as ``<folder>/<run name>.pt`` (model, config and step
    only), so that lesson 11 can play the quick start's students without retraining them."""
    from selib.checkpoints import save_model_only

    students, seed, runs_root, folder = job
    folder.mkdir(parents=True, exist_ok=True)
    for cfg in students:
        run = RunDir(runs_root / run_name(cfg["name"], cfg["seed"]))
        if cfg["seed"] == seed and run.best.is_file():
            save_model_only(run.best, folder / f"{run.name}.pt")


def _build_corpus(root: str) -> Path:
    from selib import data

    return data.build_embedded(root)


def _plan(job: tuple[list[Path], tuple, dict]) -> tuple[list[dict], list[Path]]:
    """The resolved student configs (one per config and seed) in the order they run, and the teacher
    checkpoints they name. Seed by seed, so that the three runs of the costliest config (I²S-TFCKD) are
    never side by side; within a seed the model families alternate, so that two runs sharing a teacher
    cache rarely start together and the second finds the teacher outputs the first one stored."""
    from selib.config import load

    configs, seeds, overrides = job
    position, count = {}, {}
    for path in configs:
        family = load(path, overrides).model.family
        position[path] = (count.get(family, 0), family)
        count[family] = count.get(family, 0) + 1
    interleaved = sorted(configs, key=position.__getitem__)
    students = [load(path, {**overrides, "seed": int(seed)}) for seed in seeds for path in interleaved]
    checkpoints = sorted({Path(cfg.teacher.checkpoint) for cfg in students if cfg.teacher is not None})
    return [cfg.to_dict() for cfg in students], checkpoints


def _teacher_config(job: tuple[Path, dict]) -> dict:
    """The config a shipped teacher was trained with (its record), to score it on the test split."""
    from selib.config import load

    checkpoint, overrides = job
    return load(teachers.record(checkpoint)["config"], overrides).to_dict()


def _ship_teacher(job: tuple[Path, Path, dict]) -> dict:
    """Train a course teacher that is not shipped (``make teachers`` does the same)."""
    checkpoint, runs_root, overrides = job
    config = teachers.CONFIGS / f"{checkpoint.stem}.yaml"
    print(f"{checkpoint}: not shipped; training it from {config} (make teachers)", flush=True)
    return teachers.ship(config, checkpoint.parent, runs_root, overrides)


def _run(job: tuple[dict, Path, Path | None]) -> dict:
    """One quick-start run: a student trained and tested, or (with a checkpoint) a teacher scored."""
    from selib.config import load

    config, runs_root, checkpoint = job
    cfg = load(config)
    return execute(cfg, RunDir.of(cfg, runs_root), "process", checkpoint=checkpoint)
