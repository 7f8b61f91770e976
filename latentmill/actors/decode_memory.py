"""The VAE decode's memory, planned: measured once per model (`latentmill plan`), estimated per decode call.

A video VAE's decode can need more memory than the denoiser. The planner measures the decode's peak
memory above the loaded weights at two latent sizes and fits `fixed + per_element x elements`; a decode
actor compares that estimate for each batch with its budget and picks the mode up front: `full` (the
whole batch in one call), `sliced` (one row per call) or `tiled` (the VAE's tiled and sliced decoding).
An out-of-memory error still switches an actor to tiled decoding, as the safety net.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

FULL, SLICED, TILED = "full", "sliced", "tiled"


@dataclass(frozen=True)
class DecodeMemoryPlan:
    """One decode actor's memory left for decoding (its budget less the VAE's weights) and the model's
    measured cost in the actor's dtype."""

    available_bytes: float
    fixed_bytes: float
    bytes_per_element: float

    def estimate(self, elements: int) -> float:
        """Peak bytes above the weights of decoding `elements` latent elements in one call."""
        return self.fixed_bytes + self.bytes_per_element * elements

    def mode(self, batch_elements: int, rows: int) -> str:
        if self.estimate(batch_elements) <= self.available_bytes:
            return FULL
        if rows > 1 and self.estimate(batch_elements // rows) <= self.available_bytes:
            return SLICED
        return TILED


def plan_decode_memory(family, device: str, num_gpus: float, budget_gb: float | None, peak_memory,
                       dtype) -> DecodeMemoryPlan | None:
    """The plan of an actor whose VAE is loaded, or None without a budget or a measured peak memory."""
    import torch

    if peak_memory is None:
        return None
    if budget_gb is not None:
        budget = budget_gb * 2**30
    elif device == "cuda":
        budget = torch.cuda.get_device_properties(0).total_memory * min(num_gpus, 1.0)
    else:
        return None
    weights = sum(tensor.numel() * tensor.element_size() for module in family.loaded_modules().values()
                  for tensor in (*module.parameters(), *module.buffers()))
    # Activations scale with the element size (an approximation where a VAE upcasts, e.g. SDXL's in float16).
    scale = dtype.itemsize / getattr(torch, peak_memory.dtype).itemsize
    return DecodeMemoryPlan(available_bytes=budget - weights, fixed_bytes=peak_memory.fixed_bytes * scale,
                            bytes_per_element=peak_memory.bytes_per_latent_element * scale)


@dataclass
class PeakMemory:
    bytes: int = 0


@contextlib.contextmanager
def peak_memory(device: Any) -> Iterator[PeakMemory]:
    """Peak bytes of torch tensors allocated inside the block, above what was allocated at its start.

    On CUDA the allocator's own peak statistic; on the CPU the profiler's record of every tensor
    allocation and free, replayed in order (deterministic, unlike the process's resident memory).
    """
    import torch

    result = PeakMemory()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield result
        torch.cuda.synchronize()
        result.bytes = torch.cuda.max_memory_allocated() - start
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        yield result
    events = sorted((event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"),
                    key=lambda event: event.start_ns())
    live = 0
    for event in events:
        live += event.nbytes()
        result.bytes = max(result.bytes, live)


def fit_peak_memory(samples: list[tuple[int, int]]) -> tuple[float, float]:
    """(fixed bytes, bytes per element) through (elements, peak bytes) at two sizes, both >= 0."""
    (small_elements, small_peak), (large_elements, large_peak) = sorted(samples)[0], sorted(samples)[-1]
    if large_elements == small_elements or large_peak <= small_peak:
        return 0.0, large_peak / large_elements  # no growth measured: all per element (the cautious side)
    per_element = (large_peak - small_peak) / (large_elements - small_elements)
    fixed = small_peak - per_element * small_elements
    if fixed < 0:
        return 0.0, large_peak / large_elements
    return fixed, per_element
