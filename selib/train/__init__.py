"""Training teachers and students (lesson ``06_training_teacher_student``): :class:`Trainer` and
:func:`run` (``trainer.py``), the parts of one step (``step.py``) and what makes a run resumable
(``state.py``).

One loop serves every run: a teacher (``kd.method: none``, no teacher) or a student distilled from a
frozen teacher by any :mod:`selib.kd` method. It checkpoints ``last.pt`` every epoch and every
``optim.checkpoint_every`` steps and ``best.pt`` by validation SI-SDR, and resumes *exactly*: the data
order is a pure function of ``(seed, epoch)``, a resumed run skips the batches already consumed and
restores every random state, so a run killed mid-epoch ends with the same weights as one never stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same code runs distributed data parallel (gloo on CPU, NCCL
on GPU): ``data.batch_size`` is the *global* batch; each of the W ranks takes its own slice of
``batch_size / W`` items of every global batch, so the averaged gradient is the single-process one.
Only rank 0 writes files. Command line::

    torchrun --nproc_per_node 2 -m selib train CONFIG --run-dir DIR [--set key=value ...]
"""
from selib.train.state import EpochBatches
from selib.train.step import Parts, TrainingStep, build, dataset
from selib.train.trainer import Trainer, TrainingDiverged, progress_enabled, run

__all__ = ["EpochBatches", "Parts", "Trainer", "TrainingDiverged", "TrainingStep", "build", "dataset",
           "progress_enabled", "run"]
