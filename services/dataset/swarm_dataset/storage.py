"""Object storage behind one small interface: an S3-compatible bucket through boto3, or a local folder.

`open_storage("s3://bucket/prefix", endpoint_url=...)` or `open_storage("file:///abs/path")` (a plain path works too).
Ingest reads its SOURCE through the same interface (list + get) and writes samples with `put`. Stored samples are
content-addressed (`content_key`), so identical content is stored once and no client ever chooses a path; every key
is still checked (`check_key`) so a hostile key can never escape the prefix or the folder (the 2022 trainer's
directory-traversal hole).
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import unquote, urlparse

from swarm import durable
from swarm.logs import get_logger

logger = get_logger(__name__)

CONTENT_KEY = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.(jpg|png|webp)$")
# Defaults for every S3 call: fail fast on a dead endpoint, retry transient errors (botocore's standard mode).
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 30.0
S3_MAX_ATTEMPTS = 5
PRESIGNED_URL_TTL_S = 900


class StorageError(Exception):
    """A storage operation failed (unreachable endpoint, missing bucket, permission); the message says which."""


class BadKeyError(ValueError):
    """A key that could escape its prefix or folder, or is otherwise unusable."""


class LinkOutsideError(BadKeyError):
    """A symbolic link in a folder that leads out of it: never followed (a link to a secret file must not become a
    served caption)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the storage root / prefix, '/'-separated
    size: int
    version: str  # changes when the content may have: the ETag on S3, the mtime in ns for a folder


def content_key(sha256_hex: str, extension: str) -> str:
    """The key a sample's bytes are stored under: its sha256, fanned out by the first byte."""
    key = f"{sha256_hex[:2]}/{sha256_hex}.{extension}"
    if not CONTENT_KEY.match(key):
        raise BadKeyError(f"not a content key: {key!r} (expected a lowercase sha256 hex and jpg, png or webp)")
    return key


def check_key(key: str) -> str:
    """Refuse keys that are absolute, empty, contain '..' or '.' segments, backslashes or control characters."""
    if not isinstance(key, str) or not key:
        raise BadKeyError("an object key must be a non-empty string")
    if key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        raise BadKeyError(f"object key {key!r} must be relative and may not contain backslashes or control characters")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadKeyError(f"object key {key!r} may not contain empty, '.' or '..' path segments")
    return key


class Storage(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]: ...


class LocalStorage:
    """A folder; writes are atomic and durable (temp file, fsync, rename, fsync of the folder) so a reader never sees
    half an object, not even after a power cut. Symbolic links that lead out of the folder are never followed."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root).expanduser().absolute()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StorageError(f"{self.root} is not a folder")
        self.real_root = Path(os.path.realpath(self.root))  # the root itself may be a link (/data -> /mnt/data)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        check_key(key)
        path = Path(os.path.normpath(self.root / key))
        if self.root not in path.parents:  # belt and braces after check_key
            raise BadKeyError(f"object key {key!r} leaves the storage folder")
        real = Path(os.path.realpath(path))
        if real != self.real_root and self.real_root not in real.parents:
            raise LinkOutsideError(f"{key} is a symbolic link to {real}, outside {self.root}: links out of the "
                                   f"folder are not followed (copy the file in if you mean it)")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_bytes(path, data, tmp_suffix=f".{os.getpid()}.{threading.get_ident()}.tmp")

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        walker = os.walk(base) if recursive else [(str(base), [], [e.name for e in os.scandir(base) if e.is_file()])]
        for folder, dirs, files in walker:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):  # our temp files, .DS_Store and friends
                    continue
                path = Path(folder) / name
                try:
                    stat = path.stat()
                except OSError:  # vanished between listing and stat
                    continue
                yield ObjectInfo(key=path.relative_to(self.root).as_posix(), size=stat.st_size,
                                 version=str(stat.st_mtime_ns))


def _ca_bundle() -> dict:
    """Verify TLS with the same CA bundle botocore uses (certifi), when it is installed."""
    try:
        import certifi
    except ImportError:
        return {}
    return {"ca_certs": certifi.where()}


class S3Storage:
    """`s3://bucket/prefix` through boto3: credentials from the standard chain, path-style with a custom endpoint."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region_name: str | None = None, max_pool_connections: int = 32,
                 connect_timeout: float = S3_CONNECT_TIMEOUT_S, read_timeout: float = S3_READ_TIMEOUT_S,
                 max_attempts: int = S3_MAX_ATTEMPTS, presigned_gets: bool = True):
        import boto3
        import urllib3
        from botocore.config import Config

        if not bucket:
            raise StorageError("an S3 URL needs a bucket: s3://BUCKET/optional/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                        retries={"max_attempts": max_attempts, "mode": "standard"},
                        max_pool_connections=max_pool_connections,
                        # MinIO and most self-hosted S3 servers need path-style; AWS picks its own default.
                        s3={"addressing_style": "path" if endpoint_url else "auto"})
        region = region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region,
                                                      config=config)
        self._errors = self._client.exceptions
        # GETs are the service's hot path, and boto3's request pipeline costs ~1.5 ms of CPU each (events, parsing);
        # a URL presigned by boto3 and fetched with urllib3 costs a third of that. Anything but 200 or 404 goes
        # through boto3's own get_object (its retries and error messages).
        self._http = urllib3.PoolManager(maxsize=max_pool_connections, retries=False,
                                         timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                         **_ca_bundle()) if presigned_gets else None
        self._http_errors = (urllib3.exceptions.HTTPError, OSError)

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def _fail(self, action: str, key: str, error: Exception) -> StorageError:
        return StorageError(f"S3 {action} of s3://{self.bucket}/{key} failed: {error}")

    def put(self, key: str, data: bytes) -> None:
        full = self._full(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as e:  # botocore raises many unrelated types; the caller needs one
            raise self._fail("PUT", full, e) from e

    def _presigned_get(self, full: str) -> bytes | None:
        """The object's bytes; KeyError when it does not exist; None when boto3 should try (any other outcome)."""
        try:
            url = self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": full},
                                                      ExpiresIn=PRESIGNED_URL_TTL_S)
            response = self._http.request("GET", url, preload_content=True)
        except self._http_errors as e:
            logger.debug(f"presigned GET of {full} failed ({e}); retrying through boto3")
            return None
        except Exception as e:  # noqa: BLE001 - presigning needs credentials; boto3's own call reports their absence clearly
            logger.debug(f"presigned GET of {full} not possible ({e}); using boto3")
            return None
        if response.status == 200:
            return response.data
        if response.status == 404:
            raise KeyError(full)
        return None

    def get(self, key: str) -> bytes:
        full = self._full(key)
        if self._http is not None:
            try:
                data = self._presigned_get(full)
            except KeyError:
                raise KeyError(key) from None
            if data is not None:
                return data
        try:
            return self._client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except self._errors.NoSuchKey:
            raise KeyError(key) from None
        except Exception as e:
            raise self._fail("GET", full, e) from e

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
            return True
        except Exception as e:
            status = getattr(e, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return False
            raise self._fail("HEAD", full, e) from e

    def list(self, prefix: str = "", *, recursive: bool = True) -> Iterator[ObjectInfo]:
        sub = prefix.strip("/")
        full_prefix = self._full(sub) + "/" if sub else (self.prefix + "/" if self.prefix else "")
        kwargs = {"Bucket": self.bucket, "Prefix": full_prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    key = self._relative(obj["Key"])
                    if not key or key.endswith("/"):  # folder placeholder objects
                        continue
                    yield ObjectInfo(key=key, size=int(obj["Size"]), version=obj.get("ETag", "").strip('"'))
        except Exception as e:
            raise self._fail("LIST", full_prefix, e) from e

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (the embedded MinIO and tests start empty)."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception:  # noqa: BLE001 - missing, forbidden or unreachable: creating it says which, clearly
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except Exception as e:
                raise StorageError(f"bucket {self.bucket} does not exist and could not be created: {e}") from e


def open_storage(url: str, *, endpoint_url: str | None = None, create: bool = True) -> LocalStorage | S3Storage:
    """Storage for `s3://bucket/prefix`, `file:///abs/path` or a plain folder path."""
    if not url:
        raise StorageError("a storage URL is needed: s3://bucket/prefix, file:///abs/path or a folder path")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, unquote(parsed.path), endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{url}: a file URL needs an absolute path, e.g. file:///data/objects")
        return LocalStorage(unquote(parsed.path), create=create)
    if parsed.scheme and len(parsed.scheme) > 1:  # 'C:' on Windows is a drive letter, not a scheme
        raise StorageError(f"{url}: unsupported storage scheme {parsed.scheme!r}; use s3:// or file:// or a path")
    return LocalStorage(url, create=create)
