"""`swarm export`: the single-file checkpoint loads back through diffusers' single-file loader, tensors equal."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from swarm.runconfig import ConfigError
from swarm_trainer.checkpoints import save_pipeline
from swarm_trainer.export import export_checkpoint
from swarm_trainer.model import build_tiny

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "epoch-000003"
    models = build_tiny(seed=21)
    with torch.no_grad():  # "trained" weights, not the seed's: any mix-up of keys would show
        for p in models.unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    save_pipeline(models, folder)
    return folder, models


def test_export_loads_back_with_from_single_file_and_matches(checkpoint, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder, models = checkpoint
    out = tmp_path / "model.safetensors"
    result = subprocess.run([sys.executable, "-m", "swarm_launcher", "export", str(folder), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    keys = load_file(str(out)).keys()
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in keys)
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.") for k in keys)
    pipe = StableDiffusionPipeline.from_single_file(str(out), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        loaded, trained = getattr(pipe, name).state_dict(), getattr(models, name).state_dict()
        assert loaded.keys() == trained.keys(), name
        for key in trained:
            assert torch.equal(loaded[key], trained[key]), f"{name}.{key}"


def test_fp16_unet_and_leaving_parts_out(checkpoint, tmp_path):
    folder, models = checkpoint
    out = tmp_path / "unet-only.safetensors"
    counts = export_checkpoint(folder, out, fp16_unet=True, vae=False, text_encoder=False)
    tensors = load_file(str(out))
    assert set(counts) == {"unet"} and all(k.startswith("model.diffusion_model.") for k in tensors)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    full = export_checkpoint(folder, tmp_path / "full.safetensors")
    assert full["unet"] == counts["unet"] and full["vae"] > 0 and full["text_encoder"] > 0
    assert out.stat().st_size < (tmp_path / "full.safetensors").stat().st_size / 2


def test_bad_inputs_say_what_to_fix(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="not a diffusers checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match=".safetensors"):
        export_checkpoint(checkpoint[0], tmp_path / "x.ckpt")
