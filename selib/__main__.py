"""``python -m selib COMMAND ...`` = ``selib COMMAND ...``; under DDP: ``torchrun --nproc_per_node N -m
selib train CONFIG ...`` (lesson ``06_training_teacher_student``)."""
from selib.cli import main

raise SystemExit(main())
