"""Runners execute training jobs: `local` (process slots on this machine); Ray and SLURM
runners share its interface (submit / poll / stop / free_slots)."""

from .local import Job, JobResult, LocalRunner

__all__ = ["Job", "JobResult", "LocalRunner"]
