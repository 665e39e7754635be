"""Device facts, MFU, memory and provenance for the run directory.

MFU = achieved model FLOP/s (GPT.flops_per_token x tokens/s) / (peak FLOP/s x processes).
Peaks are dense (no sparsity) vendor figures for the compute dtype; unknown devices (and
CPUs, whose peak depends on SKU, clocks and vector units) get None and MFU is reported as null.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
import uuid
from importlib import metadata
from pathlib import Path

import torch

from ..code_state import code_state

# Dense peak TFLOP/s by (name fragment, dtype); the first matching fragment wins, so the
# more specific names come first.
PEAK_TFLOPS = [
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.0, "float32": 417.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.7}),  # SXM; fp32 = TF32 tensor cores
    ("H200", {"bfloat16": 989.0, "float32": 494.7}),
    ("GH200", {"bfloat16": 989.0, "float32": 494.7}),
    ("B200", {"bfloat16": 2250.0, "float32": 1100.0}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("A10G", {"bfloat16": 70.0, "float32": 35.0}),
    ("L40S", {"bfloat16": 362.0, "float32": 183.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    ("RTX 4090", {"bfloat16": 165.2, "float32": 82.6}),
    ("RTX 3090", {"bfloat16": 71.0, "float32": 35.6}),
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for `dtype`, or None when unknown (e.g. CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in name:
            return peaks[dtype] * 1e12
    return None


def gpu_utilisation(device: torch.device):
    """A function giving the GPU's NVML utilisation now (% of the last sample period, 1/6 s to
    1 s, in which a kernel ran; about 10 us a call), or None on CPU or without NVML
    (torch.cuda.utilization needs nvidia-ml-py: pip install 'pretrainlab[gpu]')."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
    except Exception:  # noqa: BLE001 - ModuleNotFoundError without pynvml, or an NVML error: no samples, not a failed run
        return None
    return lambda: float(torch.cuda.utilization(device))


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def package_versions() -> dict:
    versions = {"python": sys.version.split()[0]}
    for pkg in ("pretrainlab", "torch", "numpy", "tokenizers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def memory_total_mb(device: torch.device) -> float | None:
    """Accelerator memory, or on CPU what the run may use: the machine's RAM, or its cap in a campaign (the job process
    passes it as PRETRAINLAB_MEMORY_CAP_MB: runners/limits.py), in MiB."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError):
        return None
    cap = os.environ.get("PRETRAINLAB_MEMORY_CAP_MB", "")
    return min(ram, float(cap)) if cap.isdigit() and int(cap) > 0 else ram


def data_recipe(manifest: dict) -> dict | None:
    """The data recipe behind a derived corpus (`pretrainlab data build`), or None."""
    source = manifest.get("source") or {}
    if not source.get("derived"):
        return None
    return {k: source.get(k) for k in ("recipe_name", "recipe_sha256", "build_sha256", "recipe_toml")}


def provenance(*, seed: int, device: torch.device, world_size: int, corpus, eval_sha256: str, recipe_hash: str,
               data_weights: dict[str, float], attention: str = "cpu", kernels: str = "torch") -> dict:
    domains = corpus.manifest["domains"]
    train = {d: domains[d]["train"] for d in corpus.domains}
    return {
        "run_id": uuid.uuid4().hex[:12],  # the run's key in the ledger
        **code_state(),
        "packages": package_versions(),
        "device": device_name(device),
        "device_type": device.type,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "world_size": world_size,
        "attention_kernel": attention,  # the kernel scaled_dot_product_attention is asked for first (train.attention)
        "fused_kernels": kernels,  # "triton": train.kernels=auto on CUDA (model/kernels.py: kernels.used); "torch": the plain ops
        "threads_per_process": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "memory_total_mb": memory_total_mb(device),
        "data_manifest_sha256": corpus.manifest_hash,
        "data_path": str(corpus.path),
        "data_recipe": data_recipe(corpus.manifest),  # a derived corpus: the recipe and build that made it
        "data_weights": data_weights,  # effective sampling shares per domain (normalised)
        # UTF-8 bytes per training token, to put the training loss in bits per byte
        "train_bytes_per_token": {d: t["num_bytes"] / max(1, t["num_tokens"]) for d, t in train.items()},
        "eval_module_sha256": eval_sha256,
        "recipe_hash": recipe_hash,
        "seed": seed,
    }
