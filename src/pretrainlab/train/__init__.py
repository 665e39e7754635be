"""The trainer (trainer.py), optimizers and schedules (optim.py), checkpoints, telemetry."""

from .trainer import EXIT_DIVERGED, EXIT_PREEMPTED, STATUS_EXIT, train

__all__ = ["EXIT_DIVERGED", "EXIT_PREEMPTED", "STATUS_EXIT", "train"]
