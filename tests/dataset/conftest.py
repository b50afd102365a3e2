"""Fixtures for the dataset service tests: generated image files, a real moto S3 server, a running service."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swarm_dataset.buckets import BucketParams
from swarm_dataset.index import Index
from swarm_dataset.ingest import ingest
from swarm_dataset.storage import open_storage


def photo(width: int, height: int, *, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A smooth, photo-like test image (gradients + a little noise) that differs by seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], axis=-1)
    pixels = (base * 200 + rng.uniform(0, 55, size=3) + rng.normal(0, 4, size=base.shape)).clip(0, 255)
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return image if mode == "RGB" else image.convert(mode)


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def write_pair(folder: Path, name: str, data: bytes, caption: str | None = "a caption") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


@pytest.fixture
def small_dataset(tmp_path):
    """Six good images of different aspect ratios with .txt captions, ingested into a folder storage."""
    source = tmp_path / "source"
    sizes = [(640, 480), (480, 640), (512, 512), (800, 400), (400, 800), (700, 500)]
    for i, (w, h) in enumerate(sizes):
        fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
        write_pair(source, f"img{i}.{ext}", encode(photo(w, h, seed=i), fmt), caption=f"caption number {i}")
    index = Index(tmp_path / "index.sqlite")
    storage = open_storage(str(tmp_path / "objects"))
    report = ingest(source=open_storage(str(source), create=False), index=index, storage=storage,
                    bucket_params=BucketParams(resolution=512, side_min=256, side_max=768), progress=False)
    assert report.added == len(sizes)
    index.close()
    return {"index_path": str(tmp_path / "index.sqlite"), "storage_url": storage.url, "sizes": sizes,
            "tmp": tmp_path}


@pytest.fixture
def dataset_server(small_dataset):
    from swarm_dataset.server import start_server

    # No /metrics here (its HTTP server takes half a second to shut down); test_metrics_count_streams starts one.
    running = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           workers=4)
    yield running
    running.stop(grace=1)

