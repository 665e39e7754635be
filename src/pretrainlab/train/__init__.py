"""The trainer (trainer.py), optimizers and schedules (optim.py), checkpoints, telemetry.

The names below are loaded on first use: importing a light submodule (rundir_lock) must not
import torch, so a bad flag or recipe is reported before torch loads."""

__all__ = ["EXIT_DIVERGED", "EXIT_PREEMPTED", "STATUS_EXIT", "train"]


def __getattr__(name: str):
    if name in __all__:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
