"""Checkpoint folders load as a diffusers pipeline and are pruned to keep_checkpoints; lease book and batching."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from swarm_trainer.checkpoints import latest_checkpoint, list_checkpoints, save_checkpoint
from swarm_trainer.leases import LeaseBook, batches, write_summary

pytestmark = pytest.mark.timeout(120)


def test_checkpoints_load_back_and_only_the_last_k_are_kept(tmp_path):
    from diffusers import StableDiffusionPipeline

    from swarm_trainer.model import build_tiny

    models = build_tiny(seed=5)
    for epoch in (1, 2, 3, 4):
        save_checkpoint(models, tmp_path, epoch=epoch, keep=2)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-000003", "epoch-000004"]
    epoch, folder = latest_checkpoint(tmp_path)
    assert epoch == 4
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    for a, b in zip(pipe.unet.parameters(), models.unet.parameters()):
        assert torch.equal(a, b)
    assert pipe.tokenizer("a cat").input_ids == models.tokenizer("a cat").input_ids
    # saving the same epoch again replaces it; an interrupted save's leftovers are cleaned up
    (tmp_path / "checkpoints" / ".tmp-epoch-000009").mkdir()
    save_checkpoint(models, tmp_path, epoch=4, keep=2)
    assert [e for e, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert not (tmp_path / "checkpoints" / ".tmp-epoch-000009").exists()


def test_batches_cover_a_chunk_with_a_smaller_last_batch():
    assert [list(b) for b in batches(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError):
        list(batches([1], 0))


def test_lease_book_tracks_validity_and_order():
    book = LeaseBook()
    a, b = SimpleNamespace(lease_id="a"), SimpleNamespace(lease_id="b")
    book.add(a)
    book.add(b)
    assert book.oldest_pending() == "a"
    book.delivered("a")
    assert book.oldest_pending() == "b"
    book.invalidate("b")
    assert book.ids() == ["a"] and not book.is_valid("b") and book.is_valid("a")
    book.drop("a")
    book.drop("b")
    assert len(book) == 0 and book.oldest_pending() is None


def test_summary_refuses_to_omit_contract_keys(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        write_summary(tmp_path / "summary.json", {"peer_id": "x"})
    full = dict(peer_id="x", name="n", samples_trained=1, chunks_reported=1, global_epoch=1, loss_first=1.0,
                loss_last=0.5, losses=[1.0, 0.5], samples_per_s=2.0, checkpoint="/c", config_version=1)
    path = write_summary(tmp_path / "summary.json", full)
    assert json.loads(path.read_text()) == full
