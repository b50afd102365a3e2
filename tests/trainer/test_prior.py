"""Prior preservation in the trainer (issue 14 section 3): stream order, batches by size, and the weighted loss
(instance + prior_loss_weight * prior, each a mean over its own samples) against hand-computed values."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from swarm_trainer.leases import batches
from swarm_trainer.model import build_tiny, prepare_for_training
from swarm_trainer.prior import chunk_batches, prior_loss, stream_order
from swarm_trainer.step import StepOptions, compute_loss, min_snr_weights, pil_to_pixels, tokenize
from tests.trainer.conftest import make_images

pytestmark = pytest.mark.timeout(120)


def test_stream_order_spreads_the_regularization_samples_evenly():
    assert stream_order([1, 2, 3], []) == [1, 2, 3]
    assert stream_order([1, 2, 3], [7, 8, 9]) == [1, 7, 2, 8, 3, 9]  # reg_ratio 0.5: they alternate
    assert stream_order([1, 2, 3, 4, 5, 6], [7, 8]) == [1, 2, 3, 7, 4, 5, 6, 8]
    assert stream_order([], [7, 8]) == [7, 8]


def _samples(ids, size=(64, 64)):
    return [(Image.new("RGB", size), f"caption {i}", i) for i in ids]


def test_chunk_batches_without_reg_are_the_old_batches_and_with_reg_batch_by_size():
    plain = _samples(range(1, 8))
    assert [(b, p) for b, p in chunk_batches(plain, 3)] == [(list(b), [False] * len(b)) for b in batches(plain, 3)]
    mixed = _samples([1, 7]) + _samples([70], size=(64, 96)) + _samples([2, 8, 3]) + _samples([71], size=(64, 96))
    got = chunk_batches(mixed, 3, reg_ids=[7, 8, 70, 71])
    assert [[s[2] for s in batch] for batch, _ in got] == [[1, 7, 2], [8, 3], [70, 71]]
    assert [prior for _, prior in got] == [[False, True, False], [True, False], [True, True]]
    with pytest.raises(ValueError, match="batch_size"):
        chunk_batches(plain, 0)


def test_prior_loss_against_hand_computed_values():
    target = torch.arange(1.0, 5.0).reshape(4, 1, 1, 1).expand(4, 2, 3, 3)  # sample i: MSE (i + 1)^2 vs zeros
    pred = torch.zeros(4, 2, 3, 3, requires_grad=True)
    prior = [False, True, False, True]
    # instance (1 + 9) / 2 = 5, prior (4 + 16) / 2 = 10
    assert prior_loss(pred, target, prior=prior, prior_loss_weight=0.5).item() == pytest.approx(5 + 0.5 * 10)
    assert prior_loss(pred, target, prior=prior, prior_loss_weight=0.0).item() == pytest.approx(5)
    weights = torch.tensor([1.0, 3.0, 0.5, 3.0])  # min-SNR weighs the instance loss only, as diffusers does
    assert prior_loss(pred, target, prior=prior, prior_loss_weight=1.0,
                      instance_weights=weights).item() == pytest.approx((1 + 4.5) / 2 + 10)
    assert prior_loss(pred, target, prior=[True] * 4, prior_loss_weight=2.0).item() == pytest.approx(2 * 7.5)
    uneven = prior_loss(pred, target, prior=[True, False, False, False], prior_loss_weight=1.0)
    assert uneven.item() == pytest.approx((4 + 9 + 16) / 3 + 1)  # each a mean over its own samples, not the batch
    uneven.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="at least one"):
        prior_loss(pred, target, prior=[False] * 4, prior_loss_weight=1.0)


@pytest.fixture(scope="module")
def models():
    m = build_tiny(seed=3)
    prepare_for_training(m, device=torch.device("cpu"))
    return m


def _loss(models, *, prior, options, seed=11):
    pixels = pil_to_pixels(make_images(4, seed=5))
    input_ids = tokenize(models.tokenizer, ["a dog", "a photo of a dog", "sks dog", "a dog"])
    return compute_loss(models, pixels, input_ids, options=options, generator=torch.Generator().manual_seed(seed),
                        prior=prior)


def _per_sample_mse(models, options, seed=11):
    """The tiny model's per-sample MSE for the same batch and random draws, by hand: what compute_loss does inside."""
    from swarm_trainer.step import encode_latents, encode_text, sample_noise, training_target

    generator = torch.Generator().manual_seed(seed)
    pixels = pil_to_pixels(make_images(4, seed=5))
    input_ids = tokenize(models.tokenizer, ["a dog", "a photo of a dog", "sks dog", "a dog"])
    with torch.no_grad():
        latents = encode_latents(models.vae, pixels, generator=generator)
        states = encode_text(models.text_encoder, input_ids)
        noise = sample_noise(latents, generator=generator)
        timesteps = torch.randint(0, models.noise_scheduler.config.num_train_timesteps, (4,), generator=generator)
        noisy = models.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = models.unet(noisy, timesteps, states, return_dict=False)[0]
        target = training_target(models.noise_scheduler, latents, noise, timesteps)
    return [float(((pred[i] - target[i]) ** 2).mean()) for i in range(4)], timesteps


def test_weighted_loss_on_a_tiny_model_and_no_reg_is_bit_identical(models):
    per_sample, timesteps = _per_sample_mse(models, StepOptions())
    options = StepOptions(prior_loss_weight=0.25)
    got = _loss(models, prior=[False, True, False, True], options=options)
    expected = (per_sample[0] + per_sample[2]) / 2 + 0.25 * (per_sample[1] + per_sample[3]) / 2
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()  # gradients reach the UNet
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in models.unet.parameters())
    models.unet.zero_grad(set_to_none=True)

    snr = StepOptions(min_snr_gamma=5.0, prior_loss_weight=2.0)
    weights = min_snr_weights(models.noise_scheduler, timesteps, 5.0).tolist()
    expected_snr = ((per_sample[0] * weights[0] + per_sample[2] * weights[2]) / 2
                    + 2.0 * (per_sample[1] + per_sample[3]) / 2)
    assert _loss(models, prior=[False, True, False, True], options=snr).item() == pytest.approx(expected_snr, rel=1e-5)

    # No regularization sample in the batch: exactly today's loss, bit for bit.
    reference = _loss(models, prior=None, options=options)
    assert torch.equal(_loss(models, prior=[False] * 4, options=options), reference)
    assert reference.item() == pytest.approx(sum(per_sample) / 4, rel=1e-5)


def test_step_options_take_prior_loss_weight_from_the_run_config():
    from swarm.runconfig import RunConfig

    assert StepOptions.from_config(RunConfig(prior_loss_weight=0.3)).prior_loss_weight == 0.3
    assert StepOptions.from_config(RunConfig()).prior_loss_weight == 1.0
