"""Per-peer memory/speed features change behaviour as claimed: EMA, gradient checkpointing, SDPA/xformers, 8-bit
AdamW choice, optimizer offload, latent caching."""
from __future__ import annotations

import pytest
import torch

from swarm.runconfig import ConfigError, RunConfig
from swarm_trainer.features import (
    configure_attention,
    configure_gradient_checkpointing,
    optimizer_class,
    xformers_available,
)
from swarm_trainer.model import build_tiny, prepare_for_training
from swarm_trainer.step import compute_loss, pil_to_pixels, tokenize

pytestmark = pytest.mark.timeout(180)


def test_ema_follows_the_weights_slowly_and_can_live_on_the_cpu():
    from swarm_trainer.ema import ParameterEMA

    param = torch.nn.Parameter(torch.zeros(4))
    ema = ParameterEMA([param], decay=0.9, offload=True, warmup=False)
    assert ema.shadow[0].device.type == "cpu"
    with torch.no_grad():
        param.fill_(1.0)
    ema.update([param])
    torch.testing.assert_close(ema.shadow[0], torch.full((4,), 0.1))
    ema.update([param])
    torch.testing.assert_close(ema.shadow[0], torch.full((4,), 0.19))
    module = torch.nn.Linear(4, 1, bias=False)
    ema2 = ParameterEMA(list(module.parameters()), decay=0.99)
    assert ema2.current_decay() == pytest.approx(0.1)  # warmup: early updates follow the weights closely
    clone = ema2.averaged_module(module)
    assert torch.equal(clone.weight, module.weight) and clone is not module


def _count_forward_calls(module) -> list[int]:
    """Counts runs of module.forward (hooks do not fire in checkpoint recomputation, the method does)."""
    calls = [0]
    forward = module.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


def test_gradient_checkpointing_recomputes_in_backward_with_identical_gradients(tiny_images):
    grads = {}
    counts = {}
    for enabled in (False, True):
        m = build_tiny(seed=9)
        prepare_for_training(m, device=torch.device("cpu"))
        configure_gradient_checkpointing(m, enabled=enabled)
        calls = _count_forward_calls(m.unet.down_blocks[1].resnets[0])
        loss = compute_loss(m, pil_to_pixels(tiny_images[:1]), tokenize(m.tokenizer, ["a"]),
                            generator=torch.Generator().manual_seed(0))
        loss.backward()
        grads[enabled] = torch.cat([p.grad.reshape(-1) for p in m.unet.parameters()])
        counts[enabled] = calls[0]
    assert counts == {False: 1, True: 2}  # activations were not kept: the block ran again in backward
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-6)


def test_sdpa_by_default_and_a_clear_error_for_missing_xformers():
    from diffusers.models.attention_processor import AttnProcessor2_0

    m = build_tiny(seed=1)
    assert configure_attention(m) == "sdpa"
    assert all(isinstance(p, AttnProcessor2_0) for p in m.unet.attn_processors.values())
    if not xformers_available():
        with pytest.raises(ConfigError, match="xformers"):
            configure_attention(m, xformers=True)


def test_8bit_adam_only_on_cuda():
    assert optimizer_class(use_8bit_adam=True, device=torch.device("cpu")) is torch.optim.AdamW
    assert optimizer_class(use_8bit_adam=False, device=torch.device("cuda")) is torch.optim.AdamW
    import bitsandbytes as bnb

    assert optimizer_class(use_8bit_adam=True, device=torch.device("cuda")) is bnb.optim.AdamW8bit


def test_latent_cache_skips_the_vae_encoder_the_second_time(tiny_images):
    from swarm_trainer.latent_cache import LatentCache

    m = build_tiny(seed=2)
    prepare_for_training(m, device=torch.device("cpu"))
    cache = LatentCache()
    calls = _count_forward_calls(m.vae.encoder)
    keys = [(1, 64, 64), (2, 64, 64)]
    pixels_for = lambda idx: pil_to_pixels([tiny_images[i] for i in idx])  # noqa: E731
    first = cache.latents(m.vae, keys, pixels_for, generator=torch.Generator().manual_seed(0))
    assert calls[0] == 1 and (cache.hits, cache.misses) == (0, 2)
    second = cache.latents(m.vae, keys, pixels_for, generator=torch.Generator().manual_seed(0))
    assert calls[0] == 1 and (cache.hits, cache.misses) == (2, 2)
    torch.testing.assert_close(first, second)  # same distribution, same noise draw
    # a fresh draw differs (the cache keeps the distribution, not one frozen sample) but stays close to the mean
    third = cache.latents(m.vae, keys, pixels_for, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(first, third)
    mixed = cache.latents(m.vae, [(3, 64, 64), (1, 64, 64)], pixels_for)
    assert calls[0] == 2 and mixed.shape == first.shape


def test_offload_optimizer_keeps_optimizer_state_off_the_model_params():
    from swarm_trainer.swarm import SwarmOptions, make_dht, make_optimizer, shutdown

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=4)
    dht = make_dht(initial_peers=[], options=SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",)))
    try:
        for offload in (True, False):
            model = torch.nn.Linear(8, 8)
            params = list(model.parameters())
            opt = make_optimizer(dht=dht, run_id=f"offload-{offload}", params=params, config=config, batch_size=1,
                                 options=SwarmOptions(offload_optimizer=offload, matchmaking_time=0.5))
            optimized = [p for g in opt.opt.param_groups for p in g["params"]]
            shares = any(o is p for o, p in zip(optimized, params))
            assert shares is (not offload), offload
            opt.shutdown()
    finally:
        shutdown(None, dht)
