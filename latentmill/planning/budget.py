"""The device budget a run can plan for: given devices, the cluster's GPUs, else its CPU cores."""

from __future__ import annotations

from latentmill.planning.optimise import Budget

# Logical CPUs left to Ray Data's read and validation tasks on a CPU budget: pools that take every
# CPU leave the read task nothing, and the job deadlocks (see README.md, "Sizing the pools").
READ_RESERVE_CPUS = 1.0


def cpu_budget(physical_cores: float, logical_cpus: float) -> float:
    """CPU cores the pools may plan for: the physical cores, less what the read tasks must keep."""
    return max(0.5, min(physical_cores, logical_cpus - READ_RESERVE_CPUS))


def detect_budget(config, requested_gpus: float | None = None, requested_cpus: float | None = None) -> Budget:
    """The devices a run can use: given ones, else the cluster's GPUs, else its CPU cores."""
    import os

    if requested_gpus:
        return Budget(devices=requested_gpus, kind="gpu")
    if requested_cpus:
        return Budget(devices=requested_cpus, kind="cpu")
    cores = float(os.cpu_count() or 1)
    if config.ray.address or os.environ.get("RAY_ADDRESS"):
        import ray

        from latentmill.pipelines.job import init_ray

        init_ray(config)
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            return Budget(devices=float(resources["GPU"]), kind="gpu")
        logical = float(resources.get("CPU", cores))
        return Budget(devices=cpu_budget(logical, logical), kind="cpu")
    if config.ray.local_num_gpus:
        return Budget(devices=float(config.ray.local_num_gpus), kind="gpu")
    gpus = _local_gpu_count()
    if gpus:
        return Budget(devices=float(gpus), kind="gpu")
    logical = float(config.ray.local_num_cpus or max(4.0, cores))  # what init_ray declares
    return Budget(devices=cpu_budget(cores, logical), kind="cpu")


def _local_gpu_count() -> int:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
