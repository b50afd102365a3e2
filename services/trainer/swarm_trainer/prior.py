"""Regularization (class) samples in the trainer: DreamBooth-style prior preservation (issue 14 section 3).

A lease names its chunk's training samples (`sample_ids`) and the regularization samples riding along
(`reg_sample_ids`, at the run config's reg_ratio). `stream_order` spreads the regularization samples evenly among the
training ones, so each local batch holds about reg_ratio of them, as diffusers' train_dreambooth.py puts instance and
class examples in every batch. `chunk_batches` cuts what was streamed into batches of one image size (regularization
samples of another aspect bucket batch apart). `prior_loss` is diffusers' loss: instance loss + prior_loss_weight *
prior loss, each a mean over its own samples. Without regularization samples the trainer does exactly what it did
before they existed: the same order, the same batches, the same loss (step.diffusion_loss's own path).
"""
from __future__ import annotations

from typing import Collection, Sequence

import torch
import torch.nn.functional as functional


def stream_order(sample_ids: Sequence[int], reg_ids: Sequence[int]) -> list[int]:
    """The lease's ids in the order to stream and train them: the training ids in their order, with the
    regularization ids spread evenly among them (position j of n + m is a regularization one when
    floor((j + 1) * m / (n + m)) > floor(j * m / (n + m)); at m == n they alternate)."""
    if not reg_ids:
        return list(sample_ids)
    total, m = len(sample_ids) + len(reg_ids), len(reg_ids)
    training, reg = iter(sample_ids), iter(reg_ids)
    return [next(reg) if (j + 1) * m // total > j * m // total else next(training) for j in range(total)]


def chunk_batches(samples: Sequence, batch_size: int, *, reg_ids: Collection[int] = ()
                  ) -> list[tuple[list, list[bool]]]:
    """(batch, which of its samples are regularization ones) for the streamed (image, caption, sample id) samples.

    Without regularization samples: consecutive batches of `batch_size` (the last may be smaller), as always.
    With them: the same within each image size, sizes in order of first appearance, since a batch is one tensor.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list] = {}
    if reg_ids:
        for sample in samples:
            groups.setdefault(sample[0].size, []).append(sample)
    else:
        groups[(0, 0)] = list(samples)
    reg = set(reg_ids)
    return [(batch, [sample[2] in reg for sample in batch])
            for group in groups.values() for batch in (group[i:i + batch_size]
                                                       for i in range(0, len(group), batch_size))]


def prior_loss(model_pred: torch.Tensor, target: torch.Tensor, *, prior: Sequence[bool], prior_loss_weight: float,
               instance_weights: torch.Tensor | None = None) -> torch.Tensor:
    """instance loss + prior_loss_weight * prior loss, as diffusers' train_dreambooth.py computes it.

    Each is the MSE's mean over its own samples (a sample's MSE is the mean over its elements); min-SNR weights
    (`instance_weights`, per sample) weigh the instance loss only, as there. A batch of regularization samples only
    is prior_loss_weight * prior loss."""
    mask = torch.as_tensor(list(prior), dtype=torch.bool, device=model_pred.device)
    if mask.shape[0] != model_pred.shape[0] or not bool(mask.any()):
        raise ValueError(f"prior must mark {model_pred.shape[0]} samples, at least one of them, got {list(prior)}")
    per_sample = functional.mse_loss(model_pred.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.dim())))
    loss = prior_loss_weight * per_sample[mask].mean()
    if bool((~mask).any()):
        instance = per_sample[~mask]
        if instance_weights is not None:
            instance = instance * instance_weights.to(instance.device)[~mask]
        loss = instance.mean() + loss
    return loss
