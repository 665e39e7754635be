"""Runners execute training jobs behind one interface (base.Runner: submit / poll / stop /
free_slots ...): `local` (process slots on this machine, runners/local.py), `ray` (actors
on a Ray cluster, runners/ray.py) and `slurm` (batch jobs on a SLURM cluster, runners/slurm.py).
A campaign gets its runner from its settings:

    runner = make_runner(cfg, workdir)    # cfg.runner, cfg.parallel, cfg.gpus, cfg.ray_address, cfg.slurm_*; job logs in workdir/logs
"""

from pathlib import Path

from .base import Attempt, Job, JobResult, Runner, RunnerEvent
from .local import LocalRunner


def _local(cfg, log_dir: Path) -> Runner:
    return _capped(LocalRunner(cfg.parallel, gpus=cfg.gpus, log_dir=log_dir), cfg)


def _ray(cfg, log_dir: Path) -> Runner:
    from .ray import RayRunner  # Ray is an optional dependency, imported only when asked for

    return _capped(RayRunner(cfg.parallel, address=cfg.ray_address, gpus=cfg.gpus is not None, log_dir=log_dir), cfg)


def _slurm(cfg, log_dir: Path) -> Runner:
    from .slurm import SlurmRunner  # submitit is an optional dependency, imported only when asked for

    settings = slurm_settings(cfg)
    runner = _capped(SlurmRunner(cfg.parallel, settings=settings, log_dir=log_dir), cfg)
    if settings.mem_gb and runner.run_memory == "auto":  # the job's memory (sbatch --mem), less the job process's share
        runner.run_memory = f"{settings.mem_gb * 1024 * 0.9:.0f}M"  # (the run's own cap, not SLURM's, stops a run past it)
    return runner


def _capped(runner, cfg):
    """The campaign's --run-memory and --run-disk on its runner's jobs (runners/limits.py)."""
    runner.run_memory = getattr(cfg, "run_memory", "auto")
    runner.run_disk = getattr(cfg, "run_disk", "auto")
    return runner


def slurm_settings(cfg):
    """A campaign's SLURM settings (runners/slurm.py: SlurmSettings): its --slurm-profile with its
    --slurm-* flags over it; with --gpus (any list) and no GPU count of their own, one GPU per run."""
    from .slurm import settings_from

    gpus = cfg.slurm_gpus_per_run
    if gpus is None and cfg.gpus is not None:
        gpus = 1
    return settings_from(cfg.slurm_profile, partition=cfg.slurm_partition, account=cfg.slurm_account, time=cfg.slurm_time,
                         cpus_per_run=cfg.slurm_cpus_per_run, gpus_per_run=gpus)


RUNNERS = {"local": _local, "ray": _ray, "slurm": _slurm}  # CampaignConfig.runner / MixtureConfig.runner -> its factory


def make_runner(cfg, workdir: Path) -> Runner:
    """The runner a campaign's settings name (a CampaignConfig or MixtureConfig: its runner,
    parallel, gpus, ray_address and slurm_* settings), with its job logs under workdir/logs."""
    return RUNNERS[cfg.runner](cfg, Path(workdir) / "logs")


__all__ = ["Attempt", "Job", "JobResult", "LocalRunner", "Runner", "RunnerEvent", "RUNNERS", "make_runner", "slurm_settings"]
