"""The outer optimizer of DiLoCo: Nesterov SGD over pseudo-gradients, on flat fp32 buffers.

The outer parameters and the momentum are identical on every peer (same start, same averaged pseudo-gradient, same
rule), so this must be deterministic and must not depend on anything local.
"""
from __future__ import annotations

from typing import Sequence

import torch

OUTER_LR = 0.7  # DiLoCo's defaults (Douillard et al., 2023), kept by OpenDiLoCo and INTELLECT-1
OUTER_MOMENTUM = 0.9


def pseudo_gradient(round_start: torch.Tensor, local: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """round_start - local: the direction the inner steps moved the parameters, negated like a gradient."""
    if round_start.shape != local.shape:
        raise ValueError(f"round start {tuple(round_start.shape)} and local parameters {tuple(local.shape)} differ")
    return torch.sub(round_start, local.to(round_start.dtype), out=out)


@torch.no_grad()
def nesterov_outer_step(params: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor, *, lr: float = OUTER_LR,
                        momentum_coef: float = OUTER_MOMENTUM) -> None:
    """In place: m <- mu * m + g;  theta <- theta - lr * (g + mu * m).

    The same update as torch.optim.SGD(nesterov=True, dampening=0) (its first step sets m = g, equal to this with
    m = 0), written out so the outer state is two plain tensors we can serve to late joiners and checkpoint.
    """
    if not lr > 0:
        raise ValueError(f"outer lr must be > 0, got {lr}")
    if not 0 <= momentum_coef < 1:
        raise ValueError(f"outer momentum must be in [0, 1), got {momentum_coef}")
    momentum.mul_(momentum_coef).add_(grad)
    params.sub_(grad.add(momentum, alpha=momentum_coef), alpha=lr)


def flatten(tensors: Sequence[torch.Tensor], *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate tensors (any device or dtype) into one flat fp32 CPU vector, into `out` when given."""
    total = sum(t.numel() for t in tensors)
    if out is None:
        out = torch.empty(total, dtype=torch.float32)
    elif out.numel() != total:
        raise ValueError(f"flat buffer holds {out.numel()} values, the tensors {total}")
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            out[offset:offset + n].copy_(t.detach().reshape(-1))
            offset += n
    return out


def unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copy a flat vector back into tensors (casting to each one's device and dtype)."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view(t.shape))
            offset += n
    if offset != flat.numel():
        raise ValueError(f"flat buffer holds {flat.numel()} values, the tensors {offset}")
