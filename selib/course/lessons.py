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


# A listening row fits the book's content column (about 750 px) at any number of clips: a grid of cards, as many
# per line as fit at AUDIO_CARD_PX each (two in the book, one on a phone), each player as wide as its card.
AUDIO_CARD_PX = 300
PEAK = 0.99   # the loudest clip of a row plays at this peak; the others keep their level relative to it


def common_gain(waves: Mapping[str, Any], peak: float = PEAK) -> float:
    """One gain for every clip of a listening row: the loudest clip's peak is brought to ``peak`` and every
    other clip is scaled by the same factor, so level differences (a quiet student, a loud noise) stay
    audible. 1.0 for a row of silence."""
    import numpy as np

    top = max((float(np.max(np.abs(np.asarray(w)))) if np.size(w) else 0.0) for w in waves.values())
    return peak / top if top > 0 else 1.0


def audio_row(waves: Mapping[str, Any], sample_rate: int = 16000, notes: Mapping[str, str] | None = None,
              caption: str = "") -> str:
    """HTML for a row of audio players, one card per clip (label above its player, an optional note such
    as an SI-SDR under the label), laid out as a wrapping grid that never needs sideways scrolling, and
    every clip played at one common gain (:func:`common_gain`), not each normalised on its own."""
    import html

    import numpy as np
    from IPython.display import Audio

    gain = common_gain(waves)
    notes = notes or {}
    cards = []
    for label, wav in waves.items():
        scaled = np.clip(np.asarray(wav, dtype=np.float64) * gain, -1.0, 1.0)
        player = Audio(scaled, rate=sample_rate, normalize=False)._repr_html_()
        player = player.replace("<audio ", "<audio style='width:100%;max-width:100%' ", 1)
        note = f"<br><small>{html.escape(notes[label])}</small>" if label in notes else ""
        cards.append(f"<div class='selib-audio-card' style='min-width:0'><b>{html.escape(label)}</b>{note}"
                     f"<div>{player}</div></div>")
    head = f"<p>{html.escape(caption)}</p>" if caption else ""
    return (f"{head}<div class='selib-audio-row' style='display:grid;gap:0.6em 1em;max-width:100%;"
            f"grid-template-columns:repeat(auto-fill,minmax(min({AUDIO_CARD_PX}px,100%),1fr))'>"
            + "".join(cards) + f"</div><p><small>All clips play at one common gain (×{gain:.3g}): "
            "louder and quieter clips sound as they are.</small></p>")


def listen(models: Mapping[str, Any], config: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """Hear and see the models side by side on one test utterance of a lesson ``config``: a row of
    audio players (noisy input, each model's output, clean speech; :func:`audio_row`, one common gain)
    and their spectrograms, with each output's SI-SDR. ``models`` maps a label to a model or to a run
    checkpoint (``best.pt``, e.g. ``results["kd"]["checkpoint"]["path"]``). Returns the waveforms by
    label (numpy, 16 kHz)."""
    import matplotlib.pyplot as plt
    import torch
    from IPython.display import HTML, display

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
    notes = {label: f"SI-SDR {metrics.si_sdr(wav, clean):.1f} dB" for label, wav in waves.items() if label != "clean"}
    display(HTML(audio_row(waves, SAMPLE_RATE, notes, caption=f"test utterance {item['id']}")))
    # Three spectrograms per line at most, so the figure keeps readable labels in a 750-pixel column.
    ncols = min(3, len(waves))
    nrows = -(-len(waves) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (label, wav) in zip(axes.flat, waves.items()):
        plots.spectrogram(wav, ax=ax, title=label)
    for ax in list(axes.flat)[len(waves):]:
        ax.set_visible(False)
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
