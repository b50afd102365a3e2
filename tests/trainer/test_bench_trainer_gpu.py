"""bench/trainer_gpu.py off CUDA: the LoRA variant's code path runs on CPU on the tiny model (a one-peer swarm,
gradient checkpointing, only the adapter handed to hivemind), and without CUDA the bench writes a skipped result."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.timeout(180)


def test_the_lora_variant_trains_only_the_adapter_with_gradient_checkpointing_on_cpu():
    from bench.trainer_cpu import _batch
    from bench.trainer_gpu import run_variant
    from swarm_trainer.lora import lora_named_parameters
    from swarm_trainer.model import build_tiny

    models = build_tiny(seed=42)
    images, captions = _batch(1, 64)
    result = run_variant("lora", models=models, device=torch.device("cpu"), precision="fp32", images=images,
                         captions=captions, steps=1, warmup=1)
    adapter = sum(p.numel() for _, p in lora_named_parameters(models.unet))
    assert adapter > 0 and result["trained_parameters"] == adapter
    assert result["images_per_s"] > 0 and result["peak_memory_gib"] is None  # measured on CUDA only
    assert models.unet.is_gradient_checkpointing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less path")
def test_without_cuda_the_bench_writes_a_skipped_result(tmp_path):
    from bench.trainer_gpu import main

    out = tmp_path / "trainer_gpu.json"
    assert main(["--only", "lora", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"benchmark": "trainer_gpu", "skipped": True,
                                           "reason": "CUDA is not available"}
