"""LoRA in a real swarm: two peers average only the adapter, the loss goes down, their adapters end identical."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from swarm.runconfig import RunConfig

PEER_SCRIPT = Path(__file__).with_name("hivemind_peer.py")
LORA = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=16, lr=1e-2, ucg=0.0,
                 train="lora")


def lora_models():
    from swarm_trainer.lora import add_lora
    from swarm_trainer.model import build_tiny

    models = build_tiny(seed=LORA.seed)
    add_lora(models, LORA)
    return models


def eval_loss(adapter: torch.Tensor | None) -> float:
    """The diffusion loss on the peers' images with fixed noise and timesteps, for a given adapter vector."""
    from conftest import make_images

    from swarm_trainer.lora import lora_named_parameters
    from swarm_trainer.step import StepOptions, compute_loss, pil_to_pixels, tokenize

    models = lora_models()
    if adapter is not None:
        with torch.no_grad():
            offset = 0
            for _, p in lora_named_parameters(models.unet):
                p.copy_(adapter[offset:offset + p.numel()].reshape(p.shape))
                offset += p.numel()
    losses = []
    for seed in (1, 2):
        images = make_images(8, seed=seed)
        input_ids = tokenize(models.tokenizer, [f"pattern number {i}" for i in range(len(images))])
        with torch.no_grad():
            losses.append(float(compute_loss(models, pil_to_pixels(images, device=torch.device("cpu")), input_ids,
                                             options=StepOptions.from_config(LORA, precision="fp32"),
                                             generator=torch.Generator().manual_seed(seed))))
    return sum(losses) / len(losses)


@pytest.mark.timeout(420)
def test_two_peers_train_a_lora_and_end_with_identical_adapters(tmp_path):
    from test_two_peers import _wait_for

    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("a", "b")}
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--workdir", str(tmp_path), "--name", "a", "--other", "b",
             "--epochs", "4", "--image-seed", "1", "--lora"], stdout=logs["a"], stderr=subprocess.STDOUT))
        _wait_for((tmp_path / "a.maddrs.json").exists, timeout=240, procs=procs)
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--workdir", str(tmp_path), "--name", "b", "--other", "a",
             "--epochs", "4", "--image-seed", "2", "--lora",
             "--initial-peers-file", str(tmp_path / "a.maddrs.json")], stdout=logs["b"], stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for f in logs.values():
            f.close()
    for name, proc in zip(("a", "b"), procs):
        assert proc.returncode == 0, f"peer {name} failed:\n" + (tmp_path / f"{name}.log").read_text()[-4000:]

    a, b = torch.load(tmp_path / "a.result.pt"), torch.load(tmp_path / "b.result.pt")
    assert a["epoch"] == b["epoch"] >= 4
    assert max(a["max_peers"], b["max_peers"]) == 2, "the peers never trained in the same epoch"
    start = lora_models()
    from swarm_trainer.lora import lora_named_parameters

    adapter_size = sum(p.numel() for _, p in lora_named_parameters(start.unet))
    assert a["params"].numel() == adapter_size, "only the adapter is handed to hivemind"
    torch.testing.assert_close(a["params"], b["params"], rtol=0, atol=1e-5)
    # The frozen base never moved: the whole UNet differs from the start only in its adapter.
    base = torch.cat([p.detach().reshape(-1) for n, p in start.unet.named_parameters() if "lora_" not in n])
    for result in (a, b):
        names = [n for n, _ in start.unet.named_parameters()]
        sizes = [p.numel() for p in start.unet.parameters()]
        chunks = torch.split(result["all_unet"], sizes)
        trained_base = torch.cat([c for n, c in zip(names, chunks) if "lora_" not in n])
        assert torch.equal(trained_base, base)
    assert eval_loss(a["params"]) < eval_loss(None), "the loss went down"
