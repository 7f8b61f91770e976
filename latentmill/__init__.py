"""latentmill: bulk image and video generation with latent diffusion models on Ray."""

__version__ = "0.1.0"
