"""Regularization images (issue 14 section 3): `swarm ingest --role`, roles kept on re-ingest, reported per role by
the index, ListSamples and GetStats; an unknown role or a role change is refused with what to do instead."""
from __future__ import annotations

import boto3
import grpc
import pytest
from botocore.config import Config

from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_dataset.index import Index
from swarm_dataset.ingest import RoleError, ingest, resolve_role
from swarm_dataset.server import start_server
from swarm_dataset.storage import open_storage
from swarm_launcher.cli import main as swarm_main
from tests.dataset.conftest import encode, photo, write_pair

pytestmark = pytest.mark.timeout(120)


def test_resolve_role():
    assert resolve_role(None, recorded=None, ingested_before=False) == "training"
    assert resolve_role(None, recorded="regularization", ingested_before=True) == "regularization"
    assert resolve_role("regularization", recorded=None, ingested_before=False) == "regularization"
    assert resolve_role(None, recorded=None, ingested_before=True) == "training"  # an index from before roles
    with pytest.raises(RoleError, match="use one of training, regularization"):
        resolve_role("class", recorded=None, ingested_before=False)
    with pytest.raises(RoleError, match="ingested with role training.*--role training"):
        resolve_role("regularization", recorded=None, ingested_before=True)
    with pytest.raises(RoleError, match="ingested with role regularization"):
        resolve_role("training", recorded="regularization", ingested_before=True)


def test_roles_from_s3_sources_in_one_index(moto_endpoint, tmp_path):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket="raw")
    for i in range(2):
        client.put_object(Bucket="raw", Key=f"instance/sks{i}.jpg", Body=encode(photo(512, 512, seed=i)))
        client.put_object(Bucket="raw", Key=f"instance/sks{i}.txt", Body=b"a photo of sks dog")
    for i in range(3):
        client.put_object(Bucket="raw", Key=f"class/dog{i}.png", Body=encode(photo(512, 512, seed=10 + i), "PNG"))
        client.put_object(Bucket="raw", Key=f"class/dog{i}.txt", Body=b"a photo of a dog")
    storage = open_storage("s3://objects/v1", endpoint_url=moto_endpoint)
    storage.ensure_bucket()
    instance = open_storage("s3://raw/instance", endpoint_url=moto_endpoint)
    reg = open_storage("s3://raw/class", endpoint_url=moto_endpoint)
    index = Index(tmp_path / "index.sqlite")
    try:
        first = ingest(source=instance, index=index, storage=storage, progress=False)
        assert first.role == "training" and first.added == 2
        second = ingest(source=reg, index=index, storage=storage, progress=False, role="regularization")
        assert second.as_dict()["role"] == "regularization" and second.added == 3
        assert second.as_dict()["index"]["roles"] == {"training": 2, "regularization": 3}
        assert "(2 training, 3 regularization)" in second.summary()

        # A re-ingest without --role keeps the role, also for files that changed since.
        client.put_object(Bucket="raw", Key="class/dog3.png", Body=encode(photo(512, 512, seed=20), "PNG"))
        client.put_object(Bucket="raw", Key="class/dog3.txt", Body=b"a photo of a dog")
        again = ingest(source=reg, index=index, storage=storage, progress=False)
        assert again.role == "regularization" and (again.added, again.unchanged) == (1, 3)
        with pytest.raises(RoleError, match="ingested with role regularization"):
            ingest(source=reg, index=index, storage=storage, progress=False, role="training")
        stats = index.stats()
        assert stats.roles == {"training": 2, "regularization": 4} and stats.samples == 6
        refs = index.list_refs()
        assert [role for _, _, _, role in refs] == ["training"] * 2 + ["regularization"] * 4
    finally:
        index.close()

    running = start_server(index_path=str(tmp_path / "index.sqlite"), listen="127.0.0.1:0", metrics_port=None,
                           s3_endpoint_url=moto_endpoint, workers=2)
    try:
        with grpc.insecure_channel(running.address) as channel:
            stub = dataset_pb2_grpc.DatasetStub(channel)
            page = stub.ListSamples(dataset_pb2.ListSamplesRequest(after_id=0, limit=100), timeout=10)
            roles = [dataset_pb2.SampleRole.Name(s.role) for s in page.samples]
            assert roles == ["SAMPLE_ROLE_TRAINING"] * 2 + ["SAMPLE_ROLE_REGULARIZATION"] * 4
            stats = stub.GetStats(dataset_pb2.GetStatsRequest(), timeout=10)
            assert dict(stats.roles) == {"training": 2, "regularization": 4} and stats.samples == 6
    finally:
        running.stop(grace=1)


def test_cli_role_flag(tmp_path, capsys):
    instance, reg = tmp_path / "instance", tmp_path / "reg"
    write_pair(instance, "a.jpg", encode(photo(512, 512, seed=1)), "sks dog")
    write_pair(reg, "b.jpg", encode(photo(512, 512, seed=2)), "dog")
    write_pair(reg, "c.jpg", encode(photo(512, 512, seed=3)), "dog")
    index = str(tmp_path / "i.sqlite")
    for args in ([str(instance)], [str(reg), "--role", "regularization"], [str(reg)]):
        with pytest.raises(SystemExit) as exit_info:
            swarm_main(["ingest", *args, "--index", index, "--json", "--no-progress"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out  # three JSON reports
    assert out.count('"role": "training"') == 1 and out.count('"role": "regularization"') == 2
    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["ingest", str(reg), "--index", index, "--role", "training", "--no-progress"])
    assert exit_info.value.code == 2 and "ingested with role regularization" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        swarm_main(["ingest", str(reg), "--index", index, "--role", "class"])
    assert exit_info.value.code == 2 and "invalid choice: 'class'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        swarm_main(["dataset", "stats", "--index", index])
    assert "samples: 3 (1 training, 2 regularization)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        swarm_main(["ingest", "--help"])
    assert "default: the role SOURCE was ingested with before, else training" in " ".join(
        capsys.readouterr().out.split())
