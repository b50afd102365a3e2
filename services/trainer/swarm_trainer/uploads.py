"""Optional upload of each saved checkpoint to the host's S3-compatible storage (AWS S3, MinIO, ...).

Uploads run in one background thread, oldest first, so training never waits on the network; at exit the peer waits
(bounded) for the queue to drain. Credentials come from the usual AWS environment variables or files; never stored.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path

from swarm.logs import get_logger
from swarm.runconfig import ConfigError

logger = get_logger(__name__)


def parse_s3_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at the ends)."""
    if not url.startswith("s3://"):
        raise ConfigError(f"checkpoint upload target must look like s3://bucket/prefix, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ConfigError(f"no bucket in {url!r}; write s3://bucket/prefix")
    return bucket, prefix.strip("/")


def make_s3_client(*, endpoint_url: str | None = None):
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint_url or None, config=config)


def upload_folder(client, folder: str | Path, *, bucket: str, prefix: str) -> list[str]:
    """Upload every file under `folder` to s3://bucket/prefix/<folder name>/...; returns the keys written."""
    folder = Path(folder)
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = "/".join(part for part in (prefix, folder.name, path.relative_to(folder).as_posix()) if part)
        client.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


class CheckpointUploader:
    def __init__(self, url: str, *, endpoint_url: str | None = None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = make_s3_client(endpoint_url=endpoint_url)
        self.uploaded: list[str] = []
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, folder: str | Path) -> None:
        self._queue.put(Path(folder))

    def _run(self) -> None:
        while True:
            folder = self._queue.get()
            if folder is None:
                return
            try:
                keys = upload_folder(self.client, folder, bucket=self.bucket, prefix=self.prefix)
                self.uploaded.append(str(folder))
                logger.info(f"uploaded {folder.name} to s3://{self.bucket}/{self.prefix} ({len(keys)} files)")
            except Exception as e:  # noqa: BLE001 - a failed upload must not stop training; the local copy stays
                self.failed.append(str(folder))
                logger.warning(f"uploading {folder} failed: {e!r}; the local checkpoint is kept")
            finally:
                self._queue.task_done()

    def close(self, *, timeout: float = 600.0) -> bool:
        """Finish queued uploads (up to `timeout` seconds); True when all were attempted."""
        self._queue.put(None)
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()
