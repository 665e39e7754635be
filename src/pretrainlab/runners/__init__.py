"""Runners execute training jobs behind one interface (base.Runner: submit / poll / stop /
free_slots ...): `local` (process slots on this machine, runners/local.py) and `ray` (actors
on a Ray cluster, runners/ray.py). A campaign gets its runner from its settings:

    runner = make_runner(cfg, workdir)    # cfg.runner, cfg.parallel, cfg.gpus, cfg.ray_address; job logs in workdir/logs
"""

from pathlib import Path

from .base import Attempt, Job, JobResult, Runner, RunnerEvent
from .local import LocalRunner


def _local(cfg, log_dir: Path) -> Runner:
    return LocalRunner(cfg.parallel, gpus=cfg.gpus, log_dir=log_dir)


def _ray(cfg, log_dir: Path) -> Runner:
    from .ray import RayRunner  # Ray is an optional dependency, imported only when asked for

    return RayRunner(cfg.parallel, address=cfg.ray_address, gpus=cfg.gpus is not None, log_dir=log_dir)


RUNNERS = {"local": _local, "ray": _ray}  # CampaignConfig.runner / MixtureConfig.runner -> its factory


def make_runner(cfg, workdir: Path) -> Runner:
    """The runner a campaign's settings name (a CampaignConfig or MixtureConfig: its runner,
    parallel, gpus and ray_address), with its job logs under workdir/logs."""
    return RUNNERS[cfg.runner](cfg, Path(workdir) / "logs")


__all__ = ["Attempt", "Job", "JobResult", "LocalRunner", "Runner", "RunnerEvent", "RUNNERS", "make_runner"]
