"""Swarm Diffusion: fine-tune Stable Diffusion with a swarm of GPUs across the internet.

This package is the foundation floor (docs/design.md, "Floors"): rpc, logs, run config, LR schedule, metrics, errors,
command-line validators, shutdown, ready files and the generated `v1` stubs. It imports no service (`swarm_*`) and
no launcher (`swarm_launcher`); tests/unit/test_layers.py keeps it so.
"""
__version__ = "0.1.0"
