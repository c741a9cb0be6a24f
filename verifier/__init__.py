"""verifier: prompt-free memorization certificates for text-to-image diffusion models."""

__version__ = "0.1.0"
