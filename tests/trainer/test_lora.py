"""LoRA (run config `train: lora`): config checks, the adapter as the only trained set, checkpoints and exports."""
from __future__ import annotations

import pytest
import torch

from swarm.errors import ConfigError
from swarm.runconfig import validate

pytestmark = pytest.mark.timeout(300)

LORA = {"train": "lora", "lora_rank": 4, "lora_alpha": 8, "resolution": 64, "buckets_side_min": 64,
        "buckets_side_max": 64}


def lora_models(seed: int = 0, **changes):
    from swarm_trainer.lora import add_lora
    from swarm_trainer.model import build_tiny

    models = build_tiny(seed=seed)
    add_lora(models, validate({**LORA, **changes}))
    return models


@pytest.mark.parametrize("changes, says", [
    ({"lora_rank": 0}, "lora_rank must be >= 1"),
    ({"train_text_encoder": True}, "set train_text_encoder: false, and lora_text_encoder: true"),
    ({"train": "qlora"}, "train must be one of full, lora"),
    ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
    ({"train": "full", "lora_text_encoder": True}, "lora_text_encoder is a LoRA option: set train: lora"),
])
def test_bad_lora_configs_are_refused_saying_what_to_fix(changes, says):
    with pytest.raises(ConfigError) as refused:
        validate({**LORA, **changes})
    assert says in str(refused.value)


def test_unknown_target_modules_are_refused_with_the_valid_names():
    with pytest.raises(ConfigError) as refused:
        lora_models(lora_targets=["to_q", "query"])
    message = str(refused.value)
    assert message.startswith("lora_targets: query name(s) no linear or conv layer of the UNet")
    assert "to_q" in message and "to_out.0" in message and "proj_in" in message


def test_only_the_adapter_trains_and_every_peer_starts_from_the_same_one():
    from swarm_trainer.lora import lora_named_parameters
    from swarm_trainer.model import prepare_for_training, trainable_parameters

    models = lora_models(lora_text_encoder=True)
    prepare_for_training(models, device=torch.device("cpu"))
    params = trainable_parameters(models)
    adapter = lora_named_parameters(models.unet) + lora_named_parameters(models.text_encoder)
    assert [id(p) for p in params] == [id(p) for _, p in adapter]
    assert all(p.requires_grad for p in params)
    frozen = [n for n, p in [*models.unet.named_parameters(), *models.text_encoder.named_parameters()]
              if p.requires_grad and "lora_" not in n]
    assert frozen == []
    # diffusers' defaults: the UNet's to_q/to_k/to_v/to_out.0, gaussian A and zero B (the adapter starts as a no-op)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in lora_named_parameters(models.unet)} == \
        {"to_q", "to_k", "to_v", "0"}
    assert all(torch.count_nonzero(p) == 0 for n, p in adapter if "lora_B" in n)
    base_size = sum(p.numel() for p in models.unet.parameters())
    assert sum(p.numel() for p in params) < base_size / 20
    other = lora_models(lora_text_encoder=True)
    other_adapter = lora_named_parameters(other.unet) + lora_named_parameters(other.text_encoder)
    for (name, a), (_, b) in zip(adapter, other_adapter):
        assert torch.equal(a, b), name


def _perturb(models, seed: int) -> None:
    """Stands in for training: the adapter moves away from its no-op start."""
    from swarm_trainer.lora import lora_named_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in lora_named_parameters(models.unet) + lora_named_parameters(models.text_encoder):
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)


def test_checkpoint_keeps_only_the_adapter_and_resumes_it_with_its_ema(tmp_path):
    import copy

    from swarm_trainer.checkpoints import list_checkpoints, resume, save_checkpoint
    from swarm_trainer.lora import lora_named_parameters

    trained = lora_models(lora_text_encoder=True)
    _perturb(trained, seed=1)
    ema_unet = copy.deepcopy(trained.unet)
    with torch.no_grad():
        for _, p in lora_named_parameters(ema_unet):
            p.mul_(0.5)
    for epoch in (1, 2, 3):
        save_checkpoint(trained, tmp_path, epoch=epoch, keep=2, ema_unet=ema_unet)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [2, 3]
    folder = list_checkpoints(tmp_path)[-1][1]
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter.safetensors", "adapter_ema.safetensors", "lora.json", "pytorch_lora_weights.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000  # the tiny UNet alone is ~6 MB

    fresh = lora_models(lora_text_encoder=True)
    epoch, _, ema_state = resume(fresh, tmp_path)
    assert epoch == 3
    for (name, a), (_, b) in zip(lora_named_parameters(fresh.unet) + lora_named_parameters(fresh.text_encoder),
                                 lora_named_parameters(trained.unet) + lora_named_parameters(trained.text_encoder)):
        assert torch.equal(a, b), name
    for name, p in lora_named_parameters(ema_unet):
        assert torch.equal(ema_state[name], p), name

    with pytest.raises(ValueError, match="rank or targets changed"):
        resume(lora_models(lora_targets=["to_q"]), tmp_path)


def _unet_output(models, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    hidden = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return models.unet(sample, torch.tensor([500]), encoder_hidden_states=hidden).sample


def _pipeline(models):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
                                   unet=models.unet, scheduler=models.noise_scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("kind", ["diffusers", "kohya"])
def test_exports_load_in_diffusers_and_reproduce_the_trained_unet(tmp_path, kind):
    from swarm_trainer.checkpoints import save_checkpoint
    from swarm_trainer.export import export_checkpoint
    from swarm_trainer.model import build_tiny

    trained = lora_models()
    _perturb(trained, seed=2)
    folder = save_checkpoint(trained, tmp_path / "run", epoch=1, keep=1)
    counts = export_checkpoint(folder, tmp_path / "out" / "style.safetensors")
    assert list(counts.values()) == [48 * 3]  # 48 adapted layers: lora_down, lora_up and alpha each
    if kind == "kohya":
        from safetensors.torch import load_file

        kohya = load_file(str(tmp_path / "out" / "style.safetensors"))
        assert all(k.startswith("lora_unet_") for k in kohya)
        assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}
        source = tmp_path / "out" / "style.safetensors"
    else:
        source = tmp_path / "out" / "style-diffusers"

    base = build_tiny(seed=0)
    base_output = _unet_output(base)
    pipeline = _pipeline(base)
    if kind == "kohya":
        pipeline.load_lora_weights(str(source.parent), weight_name=source.name)
    else:
        pipeline.load_lora_weights(str(source))
    loaded = _unet_output(base)
    expected = _unet_output(trained)
    torch.testing.assert_close(loaded, expected, rtol=1e-4, atol=1e-5)
    assert (loaded - base_output).abs().max() > 1e-3
