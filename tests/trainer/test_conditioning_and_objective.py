"""Issue-5 step features, each shown to change behaviour as claimed: caption dropout, CLIP skip, long prompts,
min-SNR-gamma, noise offset, v-prediction from the scheduler config, training the text encoder."""
from __future__ import annotations

import random

import pytest
import torch

from swarm_trainer.model import build_tiny, make_noise_scheduler, prepare_for_training, trainable_parameters
from swarm_trainer.step import (
    StepOptions,
    compute_loss,
    diffusion_loss,
    drop_captions,
    encode_text,
    final_layer_norm,
    min_snr_weights,
    pil_to_pixels,
    sample_noise,
    tokenize,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models():
    m = build_tiny(seed=11)
    prepare_for_training(m, device=torch.device("cpu"))
    return m


def test_caption_dropout_replaces_that_fraction_with_the_empty_prompt():
    captions = [f"caption {i}" for i in range(2000)]
    dropped = drop_captions(captions, ucg=0.1, rng=random.Random(0))
    empty = sum(c == "" for c in dropped)
    assert 150 < empty < 250
    assert all(c in ("", o) for c, o in zip(dropped, captions))
    assert drop_captions(captions, ucg=0.0, rng=random.Random(0)) == captions
    assert set(drop_captions(captions[:20], ucg=1.0, rng=random.Random(0))) == {""}


def test_clip_skip_uses_the_penultimate_layer_through_the_final_norm(models):
    ids = tokenize(models.tokenizer, ["a red cat"])
    last = encode_text(models.text_encoder, ids)
    skip = encode_text(models.text_encoder, ids, clip_penultimate=True)
    out = models.text_encoder(ids, output_hidden_states=True)
    torch.testing.assert_close(skip, final_layer_norm(models.text_encoder)(out.hidden_states[-2]))
    torch.testing.assert_close(last, out.last_hidden_state)
    assert not torch.allclose(last, skip)


def test_long_prompts_become_75_token_windows_encoded_separately(models):
    tok = models.tokenizer
    short, long = "a cat", "x" * 100 + " " + "y" * 60  # the tiny tokenizer spends a token per character
    ids = tokenize(tok, [short, long])
    assert ids.shape == (2, 3 * 77)
    for w in range(3):
        window = ids[1, w * 77:(w + 1) * 77].tolist()
        assert window[0] == tok.bos_token_id and tok.eos_token_id in window
    # the short caption's later windows are empty prompts (BOS, EOS, padding)
    assert ids[0, 77:79].tolist() == [tok.bos_token_id, tok.eos_token_id]
    states = encode_text(models.text_encoder, ids)
    assert states.shape == (2, 3 * 77, 32)
    # each window is encoded on its own: the second window equals encoding it alone
    torch.testing.assert_close(states[1:2, 77:154], encode_text(models.text_encoder, ids[1:2, 77:154]))
    # without long prompts the tail would be lost; with them the text reaches the UNet
    assert tokenize(tok, [short]).shape == (1, 77)
    assert tokenize(tok, ["z" * 1000], max_windows=3).shape == (1, 3 * 77)


def test_the_unet_accepts_long_prompt_states(models, tiny_images):
    pixels = pil_to_pixels(tiny_images[:1])
    loss = compute_loss(models, pixels, tokenize(models.tokenizer, ["w" * 200]))
    assert torch.isfinite(loss)


def test_min_snr_gamma_weights_down_the_easy_timesteps():
    eps, v = make_noise_scheduler(), make_noise_scheduler(prediction_type="v_prediction")
    t = torch.tensor([0, 100, 500, 999])
    w = min_snr_weights(eps, t, 5.0)
    assert w[0] < 0.01 and w[-1] == pytest.approx(1.0)  # low noise has SNR >> 5: weighted down
    assert torch.all(w[:-1] <= w[1:])
    assert torch.all(min_snr_weights(v, t, 5.0) < w + 1e-6)


def test_min_snr_changes_the_loss_and_noise_offset_changes_the_noise(models):
    # 64 samples: some timesteps surely fall where SNR > gamma (weights < 1)
    latents = torch.randn(64, 4, 8, 8)
    states = encode_text(models.text_encoder, tokenize(models.tokenizer, ["a"] * 64))
    with torch.no_grad():
        plain = diffusion_loss(models.unet, models.noise_scheduler, latents, states,
                               generator=torch.Generator().manual_seed(0))
        weighted = diffusion_loss(models.unet, models.noise_scheduler, latents, states,
                                  options=StepOptions(min_snr_gamma=5.0),
                                  generator=torch.Generator().manual_seed(0))
    assert weighted < plain
    base = sample_noise(latents, generator=torch.Generator().manual_seed(1))
    offset = sample_noise(latents, noise_offset=0.1, generator=torch.Generator().manual_seed(1))
    shift = (offset - base)
    # the offset is one constant per sample and channel
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0.01 < shift.abs().mean() < 0.3


def test_v_prediction_comes_from_the_scheduler_config_of_a_model_folder(tmp_path, tiny_images):
    from swarm_trainer.checkpoints import save_pipeline
    from swarm_trainer.model import build_models

    m = build_tiny(seed=2, prediction_type="v_prediction")
    save_pipeline(m, tmp_path / "v-model")
    loaded = build_models(str(tmp_path / "v-model"), seed=0)
    assert loaded.prediction_type == "v_prediction"
    for a, b in zip(loaded.unet.parameters(), m.unet.parameters()):
        assert torch.equal(a, b)
    prepare_for_training(loaded, device=torch.device("cpu"))
    assert torch.isfinite(compute_loss(loaded, pil_to_pixels(tiny_images[:1]), tokenize(loaded.tokenizer, ["x"])))


def test_train_text_encoder_gives_it_gradients_and_updates(tiny_images):
    m = build_tiny(seed=4)
    prepare_for_training(m, device=torch.device("cpu"), train_text_encoder=True)
    params = trainable_parameters(m, train_text_encoder=True)
    assert len(params) == len(list(m.unet.parameters())) + len(list(m.text_encoder.parameters()))
    before = [p.detach().clone() for p in m.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = compute_loss(m, pil_to_pixels(tiny_images[:2]), tokenize(m.tokenizer, ["one", "two"]))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.text_encoder.parameters())
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.text_encoder.parameters()))
