"""Checkpoint upload to S3, against moto's real S3-compatible HTTP server started by the test."""
from __future__ import annotations

import boto3
import pytest

from swarm.runconfig import ConfigError
from swarm_trainer.uploads import CheckpointUploader, parse_s3_url

pytestmark = pytest.mark.timeout(120)



def test_parse_s3_url():
    assert parse_s3_url("s3://bucket/runs/a/") == ("bucket", "runs/a")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("bucket/x", "s3:///x", "file:///tmp"):
        with pytest.raises(ConfigError):
            parse_s3_url(bad)


def test_checkpoint_folders_are_uploaded_in_the_background(tmp_path, moto_endpoint):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="ckpts")
    folder = tmp_path / "checkpoints" / "epoch-000002"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 1000)
    uploader = CheckpointUploader("s3://ckpts/run-1", endpoint_url=moto_endpoint)
    uploader.submit(folder)
    assert uploader.close(timeout=60)
    assert uploader.uploaded == [str(folder)] and uploader.failed == []
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="ckpts")["Contents"])
    assert keys == ["run-1/epoch-000002/model_index.json",
                    "run-1/epoch-000002/unet/diffusion_pytorch_model.safetensors"]
    body = s3.get_object(Bucket="ckpts", Key=keys[1])["Body"].read()
    assert body == b"\x00" * 1000


def test_a_failed_upload_is_reported_and_training_goes_on(tmp_path, moto_endpoint):
    folder = tmp_path / "epoch-000001"
    folder.mkdir()
    (folder / "x").write_text("x")
    uploader = CheckpointUploader("s3://no-such-bucket/p", endpoint_url=moto_endpoint)
    uploader.submit(folder)
    assert uploader.close(timeout=60)
    assert uploader.failed == [str(folder)] and uploader.uploaded == []
