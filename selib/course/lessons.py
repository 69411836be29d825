"""What the lessons from ``06_training_teacher_student`` to ``11_results_and_deployment`` share, so
that each lesson keeps only what it teaches.

- :func:`setup`: the first cell of a lesson (thread cap, plain log lines, repository root);
- :func:`course_teacher`: the trained teacher of a model family, shipped in ``teachers/``;
- :func:`student_config` and :func:`train_scratch_and_kd`: a scratch student and a KD student trained
  with the same small lesson budget (``configs/lessons/``), cached in ``runs/lessons/``;
- :func:`test_summary` and :func:`print_summaries`: the teacher (or the noisy input) scored on the
  lesson's test utterances, and the table that sets them side by side;
- :func:`quickstart_report`: the quick start's committed results, which lesson 11 reads.

Paths are relative to the repository root, which :func:`setup` makes the working directory. torch is
imported inside the functions, so that :func:`setup` caps the threads before torch starts.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from selib.runs import RunDir

TEACHERS_DIR = Path("teachers")          # the shipped course teachers (``make teachers``)
LESSON_CONFIGS = Path("configs/lessons")  # the lesson budgets
LESSON_RUNS = Path("runs/lessons")        # where lessons cache their runs


def setup(threads: int = 2, seed: int = 0) -> Path:
    """The set-up cell of a lesson: at most ``threads`` CPU threads (torch and BLAS; fewer when
    ``OMP_NUM_THREADS`` says so), plain log lines instead of progress bars, no "IProgress not found"
    warning, the random generators seeded, and the repository root (the folder above the notebook with
    ``pyproject.toml``) as working directory, so that ``data/``, ``configs/`` and ``runs/`` are the
    folders the ``selib`` command line uses. Returns that root."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    os.environ.setdefault("SELIB_PROGRESS", "0")
    warnings.filterwarnings("ignore", message="IProgress not found")
    here = Path.cwd().resolve()
    root = next((p for p in (here, *here.parents) if (p / "pyproject.toml").is_file()), None)
    if root is None:
        raise FileNotFoundError(f"{here}: no pyproject.toml here or above; start the lesson from inside the "
                                "selib repository (e.g. jupyter lab notebooks/).")
    os.chdir(root)
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    return root


def course_teacher(family: str, teachers_dir: str | Path = TEACHERS_DIR, runs_dir: str | Path = LESSON_RUNS,
                   overrides: Mapping[str, Any] | None = None):
    """The frozen course teacher of ``family`` and its checkpoint: ``(model, path)``.

    The teacher is ``<teachers_dir>/<family>-tiny-teacher.pt``, trained to convergence with
    ``make teachers`` (recipe ``configs/teachers/<family>-tiny-teacher.yaml``, record
    ``teachers/<family>-tiny-teacher.json``). When that file is missing, a small stand-in is trained
    into ``<runs_dir>/<family>-teacher`` with the budget of ``configs/lessons/<family>-teacher.yaml``
    (and ``overrides``), and a notice says that its numbers are not the course teacher's. The model
    is in eval mode with gradients off.
    """
    from selib import train
    from selib.checkpoints import load_checkpoint, load_model
    from selib.config import load

    shipped = Path(teachers_dir) / f"{family}-tiny-teacher.pt"
    if shipped.is_file():
        checkpoint = shipped
        note = "the course teacher"
    else:
        budget = LESSON_CONFIGS / f"{family}-teacher.yaml"
        if not budget.is_file():
            raise FileNotFoundError(f"{shipped}: no course teacher, and no stand-in budget {budget}; run "
                                    "`make teachers` or use a family with a lesson budget "
                                    f"({', '.join(sorted(p.stem[:-8] for p in LESSON_CONFIGS.glob('*-teacher.yaml')))}).")
        run = RunDir(Path(runs_dir) / f"{family}-teacher")
        print(f"NOTE: {shipped} is missing, so this lesson trains a small stand-in teacher into {run.path} "
              f"({budget}). Its results are not those of the course teacher: run `make teachers` first.")
        train.Trainer(load(budget, overrides), run.path).fit()
        checkpoint = run.best
        note = "a stand-in for the course teacher"
    model, config = load_model(checkpoint)
    model.requires_grad_(False)
    state = load_checkpoint(checkpoint)
    print(f"teacher: {checkpoint} ({note}): {config.model.family} {config.model.preset}, "
          f"{model.n_params:,} parameters, {state['step']} training steps, "
          f"best validation SI-SDR {state['best']:.2f} dB")
    return model, checkpoint


def _lesson_name(family: str, method: str, weight: float, options: Mapping[str, Any]) -> str:
    """``<family>-scratch``, or ``<family>-<method>-w<weight>`` followed by the KD options."""
    if method == "none":
        return f"{family}-scratch"
    return "-".join([f"{family}-{method}-w{weight:g}", *(f"{k}{v}" for k, v in sorted(options.items()))])


def student_config(family: str, method: str = "none", weight: float = 1.0,
                   options: Mapping[str, Any] | None = None, teacher_checkpoint: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None, runs_dir: str | Path = LESSON_RUNS):
    """The config and run folder of a lesson student: the budget of ``configs/lessons/<family>-student.yaml``
    (with ``overrides``), trained from scratch (``method="none"``) or distilled with ``method``,
    ``weight`` (λ) and ``options`` from the teacher in ``teacher_checkpoint``. Students of one family
    share everything but the KD settings, so a KD student and the scratch student are comparable."""
    from selib.checkpoints import load_checkpoint
    from selib.config import load

    options = dict(options or {})
    name = _lesson_name(family, method, weight, options)
    settings = {**(overrides or {}), "name": f"lesson-{name}"}
    if method != "none":
        if teacher_checkpoint is None:
            raise ValueError(f"kd method {method!r} needs teacher_checkpoint (e.g. from course_teacher({family!r})).")
        teacher_model = load_checkpoint(teacher_checkpoint)["config"]["model"]
        settings.update({"kd.method": method, "kd.weight": weight, "kd.options": options,
                         "teacher": {"family": teacher_model["family"], "preset": teacher_model["preset"],
                                     "overrides": teacher_model["overrides"],
                                     "checkpoint": str(teacher_checkpoint)}})
    return load(LESSON_CONFIGS / f"{family}-student.yaml", settings), Path(runs_dir) / name


def train_scratch_and_kd(family: str, method: str, teacher_checkpoint: str | Path, weight: float = 1.0,
                         options: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
                         runs_dir: str | Path = LESSON_RUNS) -> dict[str, dict]:
    """Train the scratch student and a KD student of ``family`` with the same lesson budget (see
    :func:`student_config`) and test both; finished runs are read back from ``runs_dir``.

    Returns ``{"scratch": ..., "kd": ...}``, each the run's ``metrics.json`` content: ``summary`` (test
    metrics), ``history`` (per epoch), ``model``, ``checkpoint`` and ``config``. Lesson students train
    for a few dozen steps: their difference is an example of the mechanics, not evidence about KD.
    """
    from selib import train

    results = {}
    for role, kd_method in (("scratch", "none"), ("kd", method)):
        config, run_dir = student_config(family, kd_method, weight, options, teacher_checkpoint, overrides, runs_dir)
        trainer = train.Trainer(config, run_dir)   # resumes, or returns at once when the run is complete
        trainer.fit()
        if not _tested(run_dir, config):
            trainer.test()
        results[role] = RunDir(run_dir).read_metrics()
    return results


def _tested(run_dir: Path, config) -> bool:
    """Whether the run's ``metrics.json`` is the test of its current ``best.pt`` with this config."""
    from selib.checkpoints import load_checkpoint

    run = RunDir(run_dir)
    if not run.metrics.is_file():
        return False
    metrics = run.read_metrics()
    best_step = load_checkpoint(run.best)["step"]
    return metrics["config"] == config.to_dict() and metrics["checkpoint"]["step"] == best_step


def test_summary(model, config: Mapping[str, Any]) -> dict[str, dict]:
    """``model`` scored on the test utterances of a lesson ``config`` (its dataset, ``data.test_limit``
    and ``eval.metrics``) with :func:`selib.evaluation.enhance_and_score`, as :meth:`selib.train.Trainer.test`
    scores a student: the ``summary`` of the evaluation. ``model=None`` scores the noisy input itself."""
    from selib import data
    from selib.evaluation import enhance_and_score, evaluate

    spec, names, workers = config["data"], tuple(config["eval"]["metrics"]), config["eval"]["workers"]
    test = data.get_dataset(spec["name"], "test", root=spec["root"], limit=spec["test_limit"])
    if model is not None:
        return enhance_and_score(model, test, names, workers=workers)[0].summary
    items = [(item["id"], item["noisy"].numpy(), item["clean"].numpy()) for item in test]
    return evaluate(items, metrics=names, workers=workers).summary


def listen(models: Mapping[str, Any], config: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """Hear and see the models side by side on one test utterance of a lesson ``config``: a row of
    audio players (noisy input, each model's output, clean speech) and their spectrograms, with each
    output's SI-SDR. ``models`` maps a label to a model or to a run checkpoint (``best.pt``, e.g.
    ``results["kd"]["checkpoint"]["path"]``). Returns the waveforms by label (numpy, 16 kHz)."""
    import matplotlib.pyplot as plt
    import torch
    from IPython.display import HTML, Audio, display

    from selib import data, metrics, plots
    from selib.checkpoints import load_model
    from selib.constants import SAMPLE_RATE

    spec = config["data"]
    item = data.get_dataset(spec["name"], "test", root=spec["root"], limit=index + 1)[index]
    waves = {"noisy": item["noisy"].numpy()}
    for label, model in models.items():
        if not isinstance(model, torch.nn.Module):
            model, _ = load_model(model)
        with torch.no_grad():
            waves[label] = model.eval()(item["noisy"][None])[0].numpy()
    waves["clean"] = item["clean"].numpy()
    clean = waves["clean"]
    cells = "".join(
        f"<td style='text-align:center'><b>{label}</b><br>"
        + ("" if label == "clean" else f"SI-SDR {metrics.si_sdr(wav, clean):.1f} dB<br>")
        + Audio(wav, rate=SAMPLE_RATE, normalize=True)._repr_html_() + "</td>"
        for label, wav in waves.items())
    display(HTML(f"<p>test utterance {item['id']}</p><table><tr>{cells}</tr></table>"))
    fig, axes = plt.subplots(1, len(waves), figsize=(3.2 * len(waves), 2.8), sharey=True, layout="constrained")
    for ax, (label, wav) in zip(axes, waves.items()):
        plots.spectrogram(wav, ax=ax, title=label)
    plt.show()
    return waves


def print_summaries(rows: Mapping[str, Mapping[str, dict]], title: str = "") -> None:
    """One line per model (``name -> summary``) with the mean of each metric over the utterances."""
    names = list(next(iter(rows.values())))
    n = next(iter(next(iter(rows.values())).values()))["n_total"]
    print(f"{title or f'test ({n} utt.)':18}" + "".join(f"{m:>10}" for m in names))
    for label, summary in rows.items():
        print(f"{label:18}" + "".join(f"{summary[m]['mean']:10.3f}" for m in names))


QUICKSTART_REPORT = Path("benchmarks/results/quickstart/report.json")   # committed by the quick start


def quickstart_report(path: str | Path = QUICKSTART_REPORT) -> dict:
    """The quick start's committed results (lesson ``11_results_and_deployment``): the ``report.json``
    that :func:`selib.report.report` writes, with ``runs`` (one row per config: role, mean ± std
    over seeds, and for KD students the paired difference against the scratch student with its
    bootstrap interval), ``paired`` (per KD config, metric and test SNR), ``notes``, ``failed`` and
    ``bootstrap`` (how the intervals were drawn)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the quick start's results are missing; run `make quickstart` (it "
                                "writes them) or restore the file from the repository.")
    report = json.loads(path.read_text())
    missing = [key for key in ("runs", "paired", "bootstrap") if key not in report]
    if missing:
        raise ValueError(f"{path}: not a report of selib.report.report (no {', '.join(missing)}); "
                         "write it again with `selib report`.")
    return report
