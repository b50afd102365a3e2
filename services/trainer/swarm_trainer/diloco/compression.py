"""What a peer puts on the wire for its pseudo-gradient: none, fp16, int8, or top-k blocks with error feedback.

- none / fp16 / int8: the dense pseudo-gradient, compressed by hivemind inside the all-reduce (int8 is hivemind's
  blockwise 8-bit quantization, as INTELLECT-1 sent int8 pseudo-gradients). The averaged result comes back in the
  same format.
- topk: a sparse pseudo-gradient, but it must stay all-reducible: hivemind's all-reduce averages dense vectors of
  one agreed shape, position by position, so every peer must send the SAME positions. Each peer choosing its own
  largest values (plain top-k) would need a sparse all-gather hivemind does not have. So the positions are chosen
  from what every peer already shares, in blocks of BLOCK values (cheap to gather, as SparseLoCo chunks by 64):
    * half of the budget: the blocks where the OUTER MOMENTUM (identical on every peer: the running average of the
      swarm's past averaged pseudo-gradients) is largest, i.e. where the swarm has been moving;
    * the other half: blocks drawn from a seed derived from the round number, so every block is sent now and then
      and no residual grows without bound where the momentum happens to be small.
  Each peer keeps an error-feedback residual: what it did not send this round (the unselected blocks) is added to
  its next pseudo-gradient, so nothing is lost, only delayed. The chosen values travel uncompressed (fp32): a lossy
  format would let the peers' averages differ (hivemind returns each peer the average through the wire format
  except for the part it reduced itself), while exact values keep every peer's outer parameters identical, and
  1/64 of the values in fp32 is still 32x less than the dense fp16 pseudo-gradient.
"""
from __future__ import annotations

import math

import torch

from swarm.runconfig import PSEUDO_GRAD_COMPRESSIONS as COMPRESSIONS  # the run config's one list

BLOCK = 64
TOPK_FRACTION = 1 / 64  # SparseLoCo sends ~1.56% of values


def wire_compression(name: str):
    """The hivemind compression for the all-reduce of a compression choice (topk's chosen values go as fp32)."""
    from hivemind.compression import BlockwiseQuantization, Float16Compression, NoCompression

    if name in ("none", "topk"):
        return NoCompression()
    if name == "fp16":
        return Float16Compression()
    if name == "int8":
        compression = BlockwiseQuantization()
        # Load bitsandbytes here, in the parent, before the averager forks: imported lazily inside the averager's
        # process it takes seconds (longer on a busy CPU) in the middle of the first all-reduce, which then times out.
        from hivemind.compression import CompressionInfo

        sample = torch.zeros(4096)
        compression.compress(sample, CompressionInfo.from_tensor(sample))
        return compression
    raise ValueError(f"pseudo-gradient compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")


def block_count(numel: int, *, block: int = BLOCK) -> int:
    return max(1, math.ceil(numel / block))


def blocks_to_send(num_blocks: int, *, fraction: float) -> int:
    """How many blocks one round sends: at least one, at most all."""
    if not 0 < fraction <= 1:
        raise ValueError(f"topk fraction must be in (0, 1], got {fraction}")
    return min(num_blocks, max(1, math.ceil(num_blocks * fraction)))


def round_seed(run_seed: int, round_index: int) -> int:
    """The seed every peer uses for round `round_index`'s random blocks (same inputs -> same blocks everywhere)."""
    return (run_seed * 1_000_003 + round_index * 7919 + 12345) & ((1 << 62) - 1)


def block_scores(momentum: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """Squared norm of each block of the (shared) outer momentum; the flat vector is zero-padded to whole blocks."""
    return padded_blocks(momentum, block=block).float().pow(2).sum(dim=1)


def select_blocks(*, scores: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Sorted indices of k blocks: the top k // 2 by score (none while every score is 0), the rest random by seed."""
    num_blocks = scores.numel()
    if not 1 <= k <= num_blocks:
        raise ValueError(f"k must be between 1 and {num_blocks} blocks, got {k}")
    by_score = k // 2 if bool((scores > 0).any()) else 0
    chosen = torch.topk(scores, by_score, sorted=False).indices if by_score else torch.empty(0, dtype=torch.long)
    taken = torch.zeros(num_blocks, dtype=torch.bool)
    taken[chosen] = True
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_blocks, generator=generator)
    extra = order[~taken[order]][:k - by_score]
    return torch.sort(torch.cat([chosen, extra])).values


def padded_blocks(flat: torch.Tensor, *, block: int = BLOCK) -> torch.Tensor:
    """A [num_blocks, block] view of `flat` when its length is a whole number of blocks, else a zero-padded copy."""
    num_blocks = block_count(flat.numel(), block=block)
    if flat.numel() == num_blocks * block:
        return flat.view(num_blocks, block)
    padded = torch.zeros(num_blocks * block, dtype=flat.dtype)
    padded[:flat.numel()] = flat
    return padded.view(num_blocks, block)


def padded_length(numel: int, *, block: int = BLOCK) -> int:
    return block_count(numel, block=block) * block


@torch.no_grad()
def topk_with_error_feedback(delta: torch.Tensor, residual: torch.Tensor, blocks: torch.Tensor, *,
                             block: int = BLOCK) -> torch.Tensor:
    """The values to send for `blocks`, updating `residual` in place.

    `residual` is a flat buffer of padded_length(delta.numel()) values. It first takes the pseudo-gradient in
    (residual += delta), the chosen blocks are read out, and what was sent is subtracted: afterwards
    residual == (old residual + delta) - scatter(sent), exactly the part that has not reached the swarm yet.
    """
    if residual.numel() != padded_length(delta.numel(), block=block):
        raise ValueError(f"residual must hold {padded_length(delta.numel(), block=block)} values, "
                         f"got {residual.numel()}")
    residual[:delta.numel()].add_(delta)
    view = residual.view(-1, block)
    sent = view[blocks].clone()
    view[blocks] = 0.0
    return sent.reshape(-1)


@torch.no_grad()
def scatter_blocks(values: torch.Tensor, blocks: torch.Tensor, *, numel: int, block: int = BLOCK,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """A dense flat vector of `numel` values: `values` at the chosen blocks, zeros elsewhere."""
    dense = torch.zeros(padded_length(numel, block=block), dtype=values.dtype)
    dense.view(-1, block)[blocks] = values.view(-1, block)
    if out is None:
        return dense[:numel].clone() if dense.numel() != numel else dense
    out.copy_(dense[:numel])
    return out
