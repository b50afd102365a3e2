"""Checkpoints: diffusers pipeline folders (StableDiffusionPipeline loads them) under OUTPUT/checkpoints/.

OUTPUT/checkpoints/epoch-NNNNNN/ holds model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ (no
safety checker). A folder is written under a temporary name (.tmp-epoch-NNNNNN), fsynced, and renamed into place when
complete, so neither a crash nor a power cut leaves a half checkpoint that looks whole; a failed save (disk full)
removes its temporary folder and leaves every older checkpoint as it was. Replacing a checkpoint of the same epoch
moves the old one aside (.old-epoch-NNNNNN) and removes it only once the new one is in place. Only the newest `keep`
are kept: the 2022 trainer filled disks.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from swarm.durable import fsync_path, fsync_tree
from swarm.logs import get_logger

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d{6,})$")
TMP_PREFIX = ".tmp-"  # a save in progress (or interrupted): never a checkpoint
OLD_PREFIX = ".old-"  # a checkpoint being replaced by a new save of the same epoch
# What a complete checkpoint holds: a pipeline's model_index.json, or a LoRA checkpoint's lora.json (lora_files.py).
COMPLETE_MARKERS = ("model_index.json", "lora.json")


def is_complete(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in COMPLETE_MARKERS)


def checkpoint_dir(output_dir: str | Path, epoch: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"epoch-{epoch:06d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first, as (global epoch, folder)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, *, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and leftovers of interrupted saves); returns what went."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    recover_interrupted(output_dir)
    removed = [path for _, path in list_checkpoints(output_dir)[:-keep]]
    root = Path(output_dir) / "checkpoints"
    if root.is_dir():
        removed += [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
        logger.info(f"removed old checkpoint {path}")
    return removed


TRAINING_UNET = "unet_training"


def save_pipeline(models, folder: str | Path, *, ema_unet=None) -> Path:
    """Write a StableDiffusionPipeline folder.

    With EMA, the pipeline's unet/ holds the EMA weights (what people generate with) and unet_training/ the weights
    the swarm trains, which a resumed peer continues from.
    """
    from diffusers import StableDiffusionPipeline

    from swarm_trainer.lora_files import is_lora_models, save_lora_folder

    if is_lora_models(models):  # a LoRA checkpoint holds the adapter only
        return save_lora_folder(models, folder, ema_unet=ema_unet)
    pipeline = StableDiffusionPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
        unet=ema_unet if ema_unet is not None else models.unet, scheduler=models.noise_scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    if ema_unet is not None:
        models.unet.save_pretrained(str(Path(folder) / TRAINING_UNET), safe_serialization=True)
    return Path(folder)


def recover_interrupted(output_dir: str | Path) -> None:
    """Undo what a crash in the middle of replacing a checkpoint left: an .old- folder whose new version never got
    into place goes back; one whose new version is in place is removed."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return
    for old in root.iterdir():
        if not old.name.startswith(OLD_PREFIX):
            continue
        final = root / old.name[len(OLD_PREFIX):]
        if is_complete(final):
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            old.rename(final)
            logger.warning(f"restored checkpoint {final} (a save that replaced it was interrupted)")


class NonFiniteWeights(ValueError):
    """The model to save holds NaN or Inf: nothing was written, nothing pruned."""


def save_checkpoint(models, output_dir: str | Path, *, epoch: int, keep: int, ema_unet=None,
                    extra_files: dict[str, bytes] | None = None) -> Path:
    """Save the models as checkpoints/epoch-NNNNNN (replacing one of the same epoch), then prune to `keep`.

    Raises when the save fails (disk full, say: OSError, or safetensors' own error); the temporary folder is removed
    and every checkpoint saved before stays whole. Raises NonFiniteWeights, saving and pruning nothing, when a weight
    is NaN or Inf (issue 10: a poisoned model never pushes the last good checkpoint out).
    """
    from swarm.trust.robust import first_non_finite

    for part in (models.unet, models.text_encoder, ema_unet):
        bad = first_non_finite(part.named_parameters()) if part is not None else None
        if bad is not None:
            raise NonFiniteWeights(f"not saving epoch {epoch}: parameter {bad} is NaN or Inf; the checkpoints saved "
                                   f"before are kept")
    final = checkpoint_dir(output_dir, epoch)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}"
    old = final.parent / f"{OLD_PREFIX}{final.name}"
    recover_interrupted(output_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_pipeline(models, tmp, ema_unet=ema_unet)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        fsync_tree(tmp)  # the contents reach the disk before the name that says they are complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    logger.info(f"saved checkpoint {final}")
    prune_checkpoints(output_dir, keep=keep)
    return final.resolve()


def _folder_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return state


def load_weights(models, folder: str | Path, *, text_encoder: bool = False) -> dict | None:
    """Load a checkpoint's trained weights into `models` (the UNet, and the text encoder when it trains).

    Returns the EMA UNet state when the checkpoint has one (unet/ next to unet_training/), else None.
    """
    from swarm_trainer.lora_files import LORA_MARKER, load_lora_folder

    folder = Path(folder)
    if (folder / LORA_MARKER).exists():
        return load_lora_folder(models, folder)
    ema_state = None
    if (folder / TRAINING_UNET).is_dir():
        models.unet.load_state_dict(_folder_state(folder / TRAINING_UNET))
        ema_state = _folder_state(folder / "unet")
    else:
        models.unet.load_state_dict(_folder_state(folder / "unet"))
    if text_encoder:
        models.text_encoder.load_state_dict(_folder_state(folder / "text_encoder"), strict=False)
    return ema_state


def resume(models, output_dir: str | Path, *, text_encoder: bool = False) -> tuple[int, Path, dict | None] | None:
    """`swarm train` resumes from its newest checkpoint: (epoch, folder, EMA state or None), or None if none."""
    recover_interrupted(output_dir)
    found = latest_checkpoint(output_dir)
    if found is None:
        return None
    epoch, folder = found
    ema_state = load_weights(models, folder, text_encoder=text_encoder)
    logger.info(f"resumed weights from {folder} (global epoch {epoch})")
    return epoch, folder, ema_state
