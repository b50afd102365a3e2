"""Swarm Diffusion: fine-tune Stable Diffusion with a swarm of GPUs across the internet."""
__version__ = "0.1.0"
