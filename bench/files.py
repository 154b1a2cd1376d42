"""File primitives under every writer of results: atomic replacement, a locked JSON update,
a bounded JSON read. They know nothing about runs; ``store``, ``readme`` and the peak cache
build on them."""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_TIMEOUT_S = 60
MAX_JSON_BYTES = 16 * 2**20      # a JSON object file larger than this reads as empty (a cache)


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` via a temporary file beside it and a
    rename: readers never see half.

    The temporary file is created with the umask's mode or, when ``path`` exists, with its
    mode (and owner, where allowed) while still empty, so a private file is never readable
    by others, not even for a moment. It is flushed to disk before the rename, and the
    rename after it. A failure (a full disk) leaves the old file as it was and no temporary
    behind.
    """
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        before = path.stat()
    except FileNotFoundError:
        before = None
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as file:                    # honours the umask
            if before is not None:
                os.chmod(file.fileno(), stat.S_IMODE(before.st_mode))
                if (before.st_uid, before.st_gid) != (os.getuid(), os.getgid()):
                    try:
                        os.chown(file.fileno(), before.st_uid, before.st_gid)
                    except PermissionError:  # not ours to give away: the writer owns the new file
                        pass
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Flush a rename itself to disk (where the platform can open a directory)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def update_json(path: Path, update: Callable[[dict], dict]) -> dict:
    """Read-modify-write a JSON object file under a lock: concurrent updates lose nothing.

    An unreadable or non-object file reads as empty (it is a cache); ``update`` gets the
    current content and returns the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise OSError(errno.EISDIR, f"{path} is a directory")
    try:
        with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=LOCK_TIMEOUT_S):
            current = read_json_object(path)
            new = update(current)
            write_atomically(path, json.dumps(new, indent=2, sort_keys=True) + "\n")
            return new
    except Timeout:
        raise OSError(errno.EBUSY, f"{path}: locked by another process for {LOCK_TIMEOUT_S} s") from None


def read_json_object(path: Path, limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON object file, bounded; anything else (not a regular file, over ``limit`` bytes,
    not JSON, nested too deep, not an object) reads as empty."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):      # a link to /dev/zero never ends
            return {}
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
        loaded = json.loads(raw) if len(raw) <= limit else None
    except (OSError, ValueError, RecursionError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
