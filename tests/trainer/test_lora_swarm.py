"""LoRA in a real swarm: two peers average only the adapter, the loss goes down, their adapters end identical, and
a late joiner downloads only the adapter state and ends with the same adapter."""
from __future__ import annotations

import os
import signal
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


@pytest.mark.timeout(540)
def test_two_lora_peers_train_and_a_late_joiner_downloads_only_the_adapter(tmp_path):
    """a and b train a LoRA from the start; c joins once they reached epoch 2, downloads the swarm's state as
    session.join does, trains along, and all three end with the same adapter on the untouched base."""
    from test_two_peers import _wait_for

    names = ("a", "b", "c")
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in names}
    procs = []

    def start(name: str, *args: str) -> None:
        others = ",".join(other for other in names if other != name)
        procs.append(subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), "--workdir", str(tmp_path), "--name", name, "--other", others,
             "--epochs", "5", "--image-seed", str(names.index(name) + 1), "--lora", *args],
            stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("a", "--late", "c")
        _wait_for((tmp_path / "a.maddrs.json").exists, timeout=240, procs=procs)
        initial_peers = ("--initial-peers-file", str(tmp_path / "a.maddrs.json"))
        start("b", "--late", "c", *initial_peers)
        start("c", "--join-after-epoch", "2", *initial_peers)
        for proc in procs:
            proc.wait(timeout=420)
    finally:
        for proc in procs:  # each peer leads its own process group: its p2p daemons and averagers go with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        for f in logs.values():
            f.close()
    for name, proc in zip(names, procs):
        assert proc.returncode == 0, f"peer {name} failed:\n" + (tmp_path / f"{name}.log").read_text()[-4000:]

    a, b, c = (torch.load(tmp_path / f"{name}.result.pt") for name in names)
    assert a["epoch"] == b["epoch"] == c["epoch"] >= 5
    assert max(a["max_peers"], b["max_peers"]) >= 2, "the peers never trained in the same epoch"
    start_models = lora_models()
    from swarm_trainer.lora import lora_named_parameters

    adapter = [p for _, p in lora_named_parameters(start_models.unet)]
    adapter_size = sum(p.numel() for p in adapter)
    unet_size = sum(p.numel() for p in start_models.unet.parameters())
    assert a["params"].numel() == adapter_size, "only the adapter is handed to hivemind"
    torch.testing.assert_close(a["params"], b["params"], rtol=0, atol=1e-5)
    torch.testing.assert_close(c["params"], a["params"], rtol=0, atol=1e-5)
    # The frozen base never moved, on the late joiner either: the whole UNet differs from the start only in its
    # adapter.
    names_and_sizes = [(n, p.numel()) for n, p in start_models.unet.named_parameters()]
    base = torch.cat([p.detach().reshape(-1) for n, p in start_models.unet.named_parameters() if "lora_" not in n])
    for result in (a, b, c):
        chunks = torch.split(result["all_unet"], [size for _, size in names_and_sizes])
        trained_base = torch.cat([chunk for (n, _), chunk in zip(names_and_sizes, chunks) if "lora_" not in n])
        assert torch.equal(trained_base, base)
    assert eval_loss(a["params"]) < eval_loss(None), "the loss went down"

    # The late joiner's download: the swarm's state at epoch >= 2, i.e. the adapter (parameters first, in the
    # order handed to hivemind) and AdamW's two moments and step per adapter tensor, and nothing of the base.
    joined = torch.load(tmp_path / "c.download.pt")
    assert joined["behind"] and joined["epoch_before"] == 0 and joined["epoch_after"] >= 2, joined
    states = [d for d in joined["downloads"] if d["averager"] == "TrainingStateAverager"]
    assert states, f"the joiner downloaded no training state: {joined['downloads']}"
    tensors = states[-1]["tensors"]
    assert states[-1]["epoch"] >= 2
    assert len(tensors) == 4 * len(adapter), [tuple(t.shape) for t in tensors[:8]]
    assert [t.shape for t in tensors[:len(adapter)]] == [p.shape for p in adapter]
    moments = [t for t in tensors[len(adapter):] if t.dim() > 0]
    assert sorted(t.numel() for t in moments) == sorted(2 * [p.numel() for p in adapter])
    state_size = sum(t.numel() for t in tensors)
    assert state_size == 3 * adapter_size + len(adapter), (state_size, adapter_size)
    assert state_size < unet_size / 10, f"the state held {state_size} values, the UNet has {unet_size}"
    # Nothing else: hivemind would also fetch the gradient averager's buffers (and discard them); peers serve the
    # training state only.
    assert {d["averager"] for d in joined["downloads"]} == {"TrainingStateAverager"}
