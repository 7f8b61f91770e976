"""`builtin:shapes`: a tiny latent diffusion model trained here on drawn shapes, so demos show pictures
that follow their prompts (`data` draws the pictures, `train` makes the checkpoint, `measure` checks it)."""
