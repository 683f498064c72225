"""vd: vision transformers and latent diffusion, from patches to samples."""

__version__ = "0.1.0"
