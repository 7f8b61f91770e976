"""Benchmarks (`latentmill bench ...`): results as JSON plus a Markdown table; see BENCHMARKS.md.

* ``compare``: (a) latentmill's three pools, (b) the peer pattern of Ray's Stable Diffusion batch example
  (one whole diffusers pipeline per actor), (c) the denoiser alone in-process: same model, prompts,
  parameters and resources.
* ``scaling``: simulated denoiser devices (latentmill.models.simulated), efficiency against the ideal.
* ``driver-memory``: the driver's peak RSS while streaming a large table through a simulated model.

`arithmetic` is pure and unit-tested; the runners import Ray and torch only when they run.
"""
