"""The tiny model is deterministic from the seed; the SD training step is real: finite, learns, right targets."""
from __future__ import annotations

import pytest
import torch

from swarm_trainer.model import build_tiny, prepare_for_training, tiny_tokenizer_vocab, trainable_parameters
from swarm_trainer.step import StepOptions, compute_loss, encode_latents, pil_to_pixels, tokenize, training_target

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models():
    m = build_tiny(seed=7)
    prepare_for_training(m, device=torch.device("cpu"))
    return m


def _flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_same_seed_same_weights_other_seed_other_weights(models):
    again = build_tiny(seed=7)
    other = build_tiny(seed=8)
    for name in ("unet", "vae", "text_encoder"):
        assert torch.equal(_flat(getattr(models, name)), _flat(getattr(again, name))), name
        assert not torch.equal(_flat(getattr(models, name)), _flat(getattr(other, name))), name


def test_tokenizer_is_offline_byte_level_with_config_special_ids(models):
    vocab, _ = tiny_tokenizer_vocab()
    assert (vocab["<|startoftext|>"], vocab["<|pad|>"], vocab["<|endoftext|>"]) == (0, 1, 2)
    assert len(vocab) < models.text_encoder.config.vocab_size
    ids = tokenize(models.tokenizer, ["a cat", "ünïcödé ✓"])
    assert ids.shape == (2, 77)
    assert ids[0, 0] == 0 and 2 in ids[0].tolist() and ids[0, -1] == 1  # bos ... eos, padded with pad
    # every byte is in the vocabulary: nothing maps to the unknown token (eos doubles as unk)
    assert ids[1].tolist().count(2) == 1


def test_pixels_are_scaled_to_minus_one_one(tiny_images):
    pixels = pil_to_pixels(tiny_images[:2])
    assert pixels.shape == (2, 3, 64, 64)
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and pixels.min() < -0.5
    from PIL import Image

    with pytest.raises(ValueError, match="one size"):
        pil_to_pixels([tiny_images[0], Image.new("RGB", (32, 64))])


def test_latents_are_scaled_by_the_vae_scaling_factor(models, tiny_images):
    pixels = pil_to_pixels(tiny_images[:1])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    scaled = encode_latents(models.vae, pixels, generator=g1)
    raw = models.vae.encode(pixels).latent_dist.sample(generator=g2)
    torch.testing.assert_close(scaled, raw * models.vae.config.scaling_factor)
    assert scaled.shape == (1, 4, 32, 32)


def test_epsilon_and_v_prediction_targets(models):
    from swarm_trainer.model import make_noise_scheduler

    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    assert torch.equal(training_target(models.noise_scheduler, latents, noise, timesteps), noise)
    v_sched = make_noise_scheduler(prediction_type="v_prediction")
    v = training_target(v_sched, latents, noise, timesteps)
    alpha = v_sched.alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - v_sched.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(v, alpha * noise - sigma * latents)


def test_loss_is_finite_and_decreases_on_a_fixed_batch(tiny_images):
    m = build_tiny(seed=3)
    prepare_for_training(m, device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(trainable_parameters(m), lr=1e-3)
    pixels = pil_to_pixels(tiny_images[:2])
    input_ids = tokenize(m.tokenizer, ["red stripes", "blue gradient"])
    losses = []
    for _ in range(8):
        loss = compute_loss(m, pixels, input_ids, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    # only the UNet trains by default: the VAE and the text encoder stay frozen
    assert all(p.grad is None for p in m.vae.parameters())
    assert all(p.grad is None for p in m.text_encoder.parameters())


def test_bf16_autocast_keeps_fp32_master_weights(models, tiny_images):
    pixels = pil_to_pixels(tiny_images[:1])
    loss = compute_loss(models, pixels, tokenize(models.tokenizer, ["x"]), options=StepOptions(precision="bf16"))
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    loss.backward()
    assert all(p.dtype == torch.float32 for p in models.unet.parameters())
    models.unet.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="precision"):
        compute_loss(models, pixels, tokenize(models.tokenizer, ["x"]), options=StepOptions(precision="fp8"))
