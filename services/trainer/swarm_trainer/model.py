"""Building the Stable Diffusion models a peer trains.

`model: tiny` in the run config builds a small SD-shaped set (UNet, VAE, CLIP text encoder, tokenizer, DDPM
scheduler) from config alone, seeded from the run config so every peer starts from identical weights without a
download. Any other value is a local diffusers folder or a hub id loaded with `from_pretrained` (SD 1.x and 2.x); a
hub token comes from the HF_TOKEN environment variable and is never stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from swarm.logs import get_logger

logger = get_logger(__name__)

TINY = "tiny"
BOS_TOKEN, PAD_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|pad|>", "<|endoftext|>"
TOKENIZER_MAX_LENGTH = 77


@dataclass
class SDModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    noise_scheduler: object

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def tiny_tokenizer_vocab() -> tuple[dict[str, int], list[str]]:
    """A byte-level vocabulary with no merges: every byte is a token, alone or ending a word (`</w>`).

    Ids 0/1/2 are BOS/PAD/EOS to match the tiny CLIPTextConfig (bos 0, pad 1, eos 2); 515 ids fit its vocab of 1000.
    Captions cost one token per character, which is fine for a model that exists to exercise the pipeline.
    """
    vocab = {BOS_TOKEN: 0, PAD_TOKEN: 1, EOS_TOKEN: 2}
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    for char in _bytes_to_unicode().values():
        vocab[char + "</w>"] = len(vocab)
    return vocab, []


def write_tiny_tokenizer_files(folder: str | os.PathLike) -> Path:
    """vocab.json + merges.txt in CLIP's file format, for tools that load a tokenizer from files."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_tokenizer_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    return folder


def build_tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = tiny_tokenizer_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, unk_token=EOS_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                         pad_token=PAD_TOKEN, model_max_length=TOKENIZER_MAX_LENGTH)


def make_noise_scheduler(*, prediction_type: str = "epsilon"):
    """DDPM with SD 1.x's betas (scaled_linear 0.00085-0.012 over 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                         clip_sample=False, prediction_type=prediction_type, steps_offset=1)


def build_tiny(*, seed: int, prediction_type: str = "epsilon") -> SDModels:
    """The tiny SD-shaped model of diffusers' own pipeline tests; identical weights for identical seeds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # One seed before each construction, so adding or reordering a model never changes another's weights.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=1000, max_position_embeddings=TOKENIZER_MAX_LENGTH))
    return SDModels(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=build_tiny_tokenizer(),
                    noise_scheduler=make_noise_scheduler(prediction_type=prediction_type))


def load_pretrained(model: str, *, prediction_type: str | None = None) -> SDModels:
    """A diffusers folder (model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/) or hub id.

    The prediction type comes from the model's scheduler config (SD 2.x 768 models are v-prediction) unless given.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    token = os.environ.get("HF_TOKEN") or None
    local = Path(model).expanduser()
    source = str(local) if local.exists() else model
    if local.exists() and not (local / "model_index.json").exists() and not (local / "unet").is_dir():
        from swarm.runconfig import ConfigError

        raise ConfigError(f"model folder {local} is not a diffusers folder (no model_index.json or unet/ in it)")
    kwargs = dict(token=token) if token else {}
    logger.info(f"loading model {source}")
    noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    if prediction_type and prediction_type != noise_scheduler.config.prediction_type:
        noise_scheduler.register_to_config(prediction_type=prediction_type)
    return SDModels(
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kwargs),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kwargs),
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs),
        noise_scheduler=noise_scheduler,
    )


def build_models(model: str, *, seed: int, prediction_type: str | None = None) -> SDModels:
    if model == TINY:
        return build_tiny(seed=seed, prediction_type=prediction_type or "epsilon")
    return load_pretrained(model, prediction_type=prediction_type)


def trained_named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """What trains in one model: its LoRA adapter when it has one (swarm_trainer.lora), else every parameter."""
    from swarm_trainer.lora import has_lora, lora_named_parameters

    return lora_named_parameters(module) if has_lora(module) else list(module.named_parameters())


def trainable_parameters(models: SDModels, *, train_text_encoder: bool = False) -> list[torch.nn.Parameter]:
    """The UNet (and, when asked, the text encoder); the VAE is always frozen, as in every SD fine-tuner.

    With a LoRA (run config `train: lora`) only the adapters: the UNet's, and the text encoder's when it has one.
    """
    from swarm_trainer.lora import has_lora

    params = [p for _, p in trained_named_parameters(models.unet)]
    if train_text_encoder or has_lora(models.text_encoder):
        params += [p for _, p in trained_named_parameters(models.text_encoder)]
    return params


def prepare_for_training(models: SDModels, *, device: torch.device, train_text_encoder: bool = False) -> None:
    """Move to device in fp32 (master weights; autocast gives the low-precision compute) and set grad flags.

    A model with a LoRA adapter keeps its base frozen: only the adapter requires gradients.
    """
    from swarm_trainer.lora import has_lora

    models.vae.requires_grad_(False).eval().to(device)
    text_lora = has_lora(models.text_encoder)
    models.text_encoder.requires_grad_(train_text_encoder and not text_lora).to(device)
    models.text_encoder.train(train_text_encoder or text_lora)
    models.unet.requires_grad_(not has_lora(models.unet)).train().to(device)
    for module in (models.unet, models.text_encoder):
        for _, param in trained_named_parameters(module) if has_lora(module) else ():
            param.requires_grad_(True)
