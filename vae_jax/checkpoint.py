"""Atomic checkpoints: a crash at any moment leaves the previous one intact.

The tree is serialised with flax's msgpack, written to a temporary file in the
same directory, flushed and fsync-ed, then moved over the old file with
``os.replace`` (atomic on POSIX) and the directory entry fsync-ed. Keys are
never stored: training derives them from the seed and the step counter.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

# The errors of a full disk or quota: reported with the file and the space it needs.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: every file vae_jax writes
    (checkpoints, records, bits) goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # a plain file's mode, not mkstemp's owner-only one
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno not in DISK_FULL:
            raise
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise OSError(
            error.errno,
            f"no space left to write {path}: it needs {len(data):,} bytes, "
            f"{shutil.disk_usage(path.parent).free:,} are free; {kept}",
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: str | Path, tree: Any) -> None:
    write_atomic(path, serialization.msgpack_serialize(serialization.to_state_dict(tree)))


def restore(path: str | Path, template: Any, upgrade: Callable[[dict], dict] | None = None) -> Any:
    """Read ``path`` into the structure of ``template`` (shapes are checked).

    ``upgrade`` maps the raw state dict of an older layout onto today's before
    it is read (``experiments.workdir`` uses it for checkpoints of earlier code).

    Raises:
      ValueError: naming ``path``, if it is truncated, corrupt, or holds
        another model's arrays. The file is left as it is.
    """
    data = Path(path).read_bytes()
    try:
        raw = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several types for bad bytes
        raise ValueError(
            f"checkpoint {path} is unreadable ({len(data)} bytes, truncated or corrupt: "
            f"{type(error).__name__}: {error})"
        ) from error
    try:
        restored = serialization.from_state_dict(template, raw if upgrade is None else upgrade(raw))
    except Exception as error:  # flax names the first key or leaf that does not fit
        first_line = (str(error).splitlines() or [""])[0]
        raise ValueError(
            f"checkpoint {path} is readable but holds parameters for a different model "
            f"(its tree does not fit this model's: {type(error).__name__}: {first_line})"
        ) from error
    for want, got in zip(
        jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(restored), strict=True
    ):
        if np.shape(want) != np.shape(got):
            raise ValueError(
                f"checkpoint {path} holds an array of shape {np.shape(got)} where the model "
                f"expects {np.shape(want)}: it was written by a different model"
            )
    return restored
