"""The durable append-only log of graph writes (POST /v1/edges), replayed at start before ready.

The format (encode, frame) and its tolerant read live in bundle/edge_log.py (the job folds a log with the same
code: `distill refresh --edge-log`); this module is the writing side. A write is acknowledged only
after `os.fsync` has covered its frame; concurrent writers share fsyncs (group commit: whoever syncs
first covers everything written before it).

Replay: a torn or corrupt *last* frame (a crash in the middle of an append, which was therefore
never acknowledged) is truncated away with a warning; a bad frame with valid data after it is
corruption of acknowledged writes, and the log is refused with the byte offset.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path

from bundle.edge_log import MAGIC, Contents, Entry, Header, frame, read
from bundle.errors import BundleInvalid
from serve.errors import EdgeLogError

log = logging.getLogger("serve")
# What the service adds to the format's own message: the fix is a setting of this service.
HINTS = {"magic": "; point SERVE_EDGE_LOG at another path"}


def replay(data: bytes, path: Path) -> Contents:
    """bundle.edge_log.read with its refusals as EdgeLogError (503 edge_log_invalid)."""
    try:
        return read(data, path)
    except BundleInvalid as exc:
        detail = dict(exc.detail or {})
        raise EdgeLogError(exc.message + HINTS.get(str(detail.pop("problem", "")), ""), detail) from None


class EdgeLog:
    """An open log: `append` frames a payload (on one thread at a time, in order), `sync` makes
    everything up to an offset durable, sharing one fsync between concurrent callers."""

    def __init__(self, path: Path, fd: int, end: int, seq: int) -> None:
        self.path, self._fd = path, fd
        self.written = self.synced = end
        self.seq = seq
        self.fsyncs = 0
        self._write_lock = threading.Lock()
        self._sync_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, header: Header) -> tuple[EdgeLog, list[Entry]]:
        """Open (or create) the log at `path` for the bundle `header` -> (log, entries to replay).
        Raises EdgeLogError when it belongs to another bundle or is corrupt before its end."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd, path)
            return cls._open_locked(path, fd, header)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _open_locked(cls, path: Path, fd: int, header: Header) -> tuple[EdgeLog, list[Entry]]:
        found = replay(path.read_bytes(), path)
        if found.torn_bytes:
            log.warning("edge log %s: dropping a torn last record (%d bytes at offset %d, never acknowledged)",
                        path, found.torn_bytes, found.end)
        if found.header is not None:
            _check_header(found.header, header, path)
        entries = found.entries
        os.ftruncate(fd, found.end)
        os.lseek(fd, found.end, os.SEEK_SET)
        opened = cls(path, fd, found.end, entries[-1].seq if entries else 0)
        if found.header is None:
            prefix = MAGIC if found.end == 0 else b""
            opened.append(prefix + frame(json.dumps(header.payload(), separators=(",", ":")).encode()), raw=True)
            opened.sync(opened.written)
            _sync_directory(path)  # a new file's directory entry must survive the crash too
        return opened, entries

    def append(self, data: bytes, raw: bool = False) -> int:
        """Write one payload's frame (or `raw` bytes) at the end -> the offset just past it."""
        with self._write_lock:
            view = memoryview(data if raw else frame(data))
            while view:
                view = view[os.write(self._fd, view):]
            self.written += len(data if raw else frame(data))
            return self.written

    def sync(self, end: int) -> float:
        """Block until bytes up to `end` are durable -> seconds this caller's fsync took (0 when
        another caller's fsync already covered them)."""
        with self._sync_lock:
            if self.synced >= end:
                return 0.0
            target = self.written  # everything written so far rides on this one fsync
            started = time.perf_counter()
            os.fsync(self._fd)
            self.synced = target
            self.fsyncs += 1
            return time.perf_counter() - started

    def close(self) -> None:
        os.close(self._fd)


def _check_header(found: Header, expected: Header, path: Path) -> None:
    if found.bundle_digest != expected.bundle_digest:
        raise EdgeLogError(
            f"{path} belongs to bundle {found.bundle_version} but the served bundle is "
            f"{expected.bundle_version}; "
            "a log is replayed only onto the bundle it was written for: fold it into a new bundle with "
            "`distill refresh --edge-log`, or point SERVE_EDGE_LOG at a new path",
            {"path": str(path), "log_bundle_version": found.bundle_version,
             "served_version": expected.bundle_version})


def _lock(fd: int, path: Path) -> None:
    """One writer per log: a second service (or a reload in this one) appending too would interleave frames."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise EdgeLogError(f"the edge log {path} is in use by another writer (a running service, or the bundle "
                           "served here: a log is bound to one bundle, restart to serve another)",
                           {"path": str(path)}) from None


def _sync_directory(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
