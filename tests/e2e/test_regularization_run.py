"""A short real run with regularization images (issue 14 section 3): host services and a LoRA trainer as separate
processes, a training set and a regularization set in one index, reg_ratio 0.5. Both counts come out right: the
training set's samples once per data epoch, and as many regularization samples riding along (one per training
sample: no chunk here wants more than the 4 class images), trained by the peer beside them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from swarm_launcher.demo import (
    DEMO_CONFIG,
    DEMO_LORA_CONFIG,
    coordinator_progress,
    start_demo_host,
    start_demo_trainer,
    wait_for_trainers,
)
from swarm_launcher.demo_images import write_demo_folder

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TRAINING_IMAGES, REG_IMAGES = 6, 4


def _ingest(workdir, folder, *, role=None) -> None:
    from swarm_dataset.buckets import BucketParams
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import ingest
    from swarm_dataset.storage import open_storage

    index = Index(workdir / "host" / "dataset.sqlite")
    try:
        params = BucketParams(resolution=DEMO_CONFIG["resolution"], side_min=DEMO_CONFIG["buckets_side_min"],
                              side_max=DEMO_CONFIG["buckets_side_max"])
        ingest(source=open_storage(str(folder), create=False), index=index, bucket_params=params, progress=False,
               storage=open_storage(f"file://{workdir / 'host' / 'objects'}"), role=role)
    finally:
        index.close()


def test_lora_run_with_regularization_images_counts_both_sets(tmp_path):
    # One global step for the whole run (target_batch_size = every sample): a lone peer spends no time in matchmaking.
    config = {**DEMO_CONFIG, **DEMO_LORA_CONFIG, "max_data_epochs": 1, "reg_ratio": 0.5, "prior_loss_weight": 1.0,
              "target_batch_size": 2 * TRAINING_IMAGES}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "host").mkdir()
    assert write_demo_folder(tmp_path / "instance", limit=TRAINING_IMAGES) == TRAINING_IMAGES
    rng = np.random.default_rng(0)
    (tmp_path / "class").mkdir()
    for i in range(REG_IMAGES):  # square class images: the demo's other buckets draw from them all
        shade = np.linspace(0.3, 1.0, 64)[:, None, None] * np.ones((64, 64, 3))
        Image.fromarray((rng.uniform(0, 255, 3) * shade).astype(np.uint8), "RGB").save(tmp_path / "class" / f"c{i}.png")
        (tmp_path / "class" / f"c{i}.txt").write_text("a photo")
    _ingest(tmp_path, tmp_path / "instance")
    _ingest(tmp_path, tmp_path / "class", role="regularization")

    host = start_demo_host(tmp_path, tmp_path / "run.yaml", tmp_path / "host" / "dataset.sqlite",
                           f"file://{tmp_path / 'host' / 'objects'}", status_port=None)
    try:
        from swarm_coordinator.tokens import create_token

        token = create_token(str(host.workdir / "coordinator.sqlite"), name="reg-test")
        # Alone in the swarm, nobody to wait for at the end barrier.
        trainer = start_demo_trainer(tmp_path, 0, coordinator=host.coordinator_address, token=token,
                                     extra_args=["--barrier-timeout", "5", "--matchmaking-time", "1",
                                                 "--averaging-timeout", "5"])
        try:
            wait_for_trainers([trainer], host.coordinator_address, token, total=TRAINING_IMAGES, timeout=480)
        finally:
            trainer.stop(timeout=60)
        progress = coordinator_progress(host.coordinator_address, token)
    finally:
        host.stop()
    assert progress is not None and progress.run_complete
    assert (progress.samples_total, progress.samples_done, progress.data_epochs_done) == (TRAINING_IMAGES,) * 2 + (1,)
    # reg_ratio 0.5: one regularization sample per training sample (no chunk holds more than the 4 of the set)
    assert (progress.reg_samples_total, progress.reg_samples_done) == (REG_IMAGES, TRAINING_IMAGES)
    summary = json.loads((tmp_path / "trainer-0" / "summary.json").read_text())
    assert summary["samples_trained"] == 2 * TRAINING_IMAGES  # the peer trained both sets
