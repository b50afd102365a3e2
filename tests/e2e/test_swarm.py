"""The whole swarm, end to end, as separate real processes on loopback: coordinator, dataset service, bootstrap DHT
and two trainers (the second in client mode), training a tiny SD-shaped model on real images."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _unet_tensors(checkpoint: str) -> dict[str, torch.Tensor]:
    return load_file(f"{checkpoint}/unet/diffusion_pytorch_model.safetensors")


def test_both_trainers_reach_the_same_global_epoch_with_matching_parameters(swarm_run):
    summary = swarm_run["summary"]
    epochs = [t["global_epoch"] for t in summary["trainers"]]
    assert epochs[0] == epochs[1] > 0, epochs
    first, second = (_unet_tensors(t["checkpoint"]) for t in summary["trainers"])
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], atol=1e-5, rtol=1e-4, msg=f"{name} differs")
    # Parameters moved away from their (shared, seeded) initialisation: the swarm really trained.
    assert summary["global_epochs"] >= 3


def test_every_chunk_reported_done_exactly_once_per_data_epoch(swarm_run):
    workdir, summary = swarm_run["workdir"], swarm_run["summary"]
    from swarm_coordinator.audit import audit_chunks

    audit = audit_chunks(f"{workdir}/host/coordinator.sqlite")
    data_epochs = json.loads((workdir / "summary.json").read_text())["data_epochs"]
    assert audit["chunks"] > 0
    assert audit["lost"] == 0 and audit["double_counted"] == 0, audit
    assert audit["times_trained"] == {data_epochs: audit["chunks"]}, audit
    assert summary["samples_trained"] == audit["samples"] * data_epochs
    assert sum(t["chunks_reported"] for t in summary["trainers"]) == audit["chunks"] * data_epochs


def test_loss_went_down(swarm_run):
    summary = swarm_run["summary"]
    assert summary["loss_last"] < summary["loss_first"], (summary["loss_first"], summary["loss_last"])
