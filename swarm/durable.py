"""Durable files: what a crash or a power cut may leave on disk is either the old version or the new one, whole.

A rename is atomic, but without fsync the new name can reach the disk before the new contents do, so a power cut
leaves a complete-looking file or folder full of zeros. Each helper here writes to a temporary name, fsyncs the data,
renames it into place and fsyncs the folder that holds the name. Used for checkpoints (trainer) and objects in a local
storage folder (dataset service).
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (and `root` itself), deepest first; symlinks are not followed."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_path(path)
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fsync_path(path)
    fsync_path(root)


def write_bytes(path: str | os.PathLike, data: bytes, *, tmp_suffix: str = ".tmp") -> None:
    """Write `data` to `path` atomically and durably: temporary file, fsync, rename, fsync of the folder.

    `tmp_suffix` must make the temporary name unique among concurrent writers of the same path (the caller knows
    its pid and thread). A failed write removes its temporary file and leaves `path` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{tmp_suffix}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
