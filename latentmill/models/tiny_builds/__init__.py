"""Builders of the built-in tiny checkpoints, one module per model family.

Each module's `MODELS` maps a built-in name to (builder, generation defaults). A builder writes a
complete diffusers checkpoint with seeded random weights and locally trained tokenizers, so every
build is byte-identical and nothing is downloaded. Heavy imports stay inside the builders.
"""

SEED = 0
