"""The durable append-only log of graph writes (POST /v1/edges), replayed at start before ready.

File layout: the magic line `graph-distill edge log v1\\n`, then framed records. A frame is
`length (u32 LE) | crc32 of the payload (u32 LE) | payload` and a payload is compact UTF-8 JSON:
record 0 is the header (the bundle the log belongs to), every later record is one acknowledged
write (`Entry`: new nodes and directed edges, as the request resolved them). A write is
acknowledged only after `os.fsync` has covered its frame; concurrent writers share fsyncs (group
commit: whoever syncs first covers everything written before it).

Replay: a torn or corrupt *last* frame (a crash in the middle of an append, which was therefore
never acknowledged) is truncated away with a warning; a bad frame with valid data after it is
corruption of acknowledged writes, and the log is refused with the byte offset.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.ids import NodeKey
from serve.errors import EdgeLogError

log = logging.getLogger("serve")
MAGIC = b"graph-distill edge log v1\n"
FRAME = struct.Struct("<II")
MAX_PAYLOAD = 64 << 20  # no single request body can encode to more (SERVE_MAX_BODY_BYTES <= 64 MiB)
FORMAT = 1


@dataclass(frozen=True)
class Header:
    """What a log is bound to: the bundle's version and full served digest."""

    bundle_version: str
    bundle_digest: str

    def payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "bundle_version": self.bundle_version, "bundle_digest": self.bundle_digest}


@dataclass(frozen=True)
class NodeRecord:
    """A node added to the graph: external id and raw features [F]."""

    id: NodeKey
    features: tuple[float, ...]


@dataclass(frozen=True)
class EdgeRecord:
    """A directed edge src -> dst (external ids), time in unix seconds, optional weight / rating."""

    src: NodeKey
    dst: NodeKey
    time: float
    weight: float | None = None


@dataclass(frozen=True)
class Entry:
    """One acknowledged write: its sequence number (1, 2, ...), its nodes, then its edges."""

    seq: int
    nodes: tuple[NodeRecord, ...]
    edges: tuple[EdgeRecord, ...]


def encode(entry: Entry) -> bytes:
    """Entry -> payload bytes (JSON: floats written as Python's shortest round-trip repr)."""
    body = {"seq": entry.seq, "nodes": [[n.id, list(n.features)] for n in entry.nodes],
            "edges": [[e.src, e.dst, e.time, e.weight] for e in entry.edges]}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode(payload: bytes) -> Entry:
    body = json.loads(payload)
    return Entry(int(body["seq"]), tuple(NodeRecord(i, tuple(x)) for i, x in body["nodes"]),
                 tuple(EdgeRecord(s, d, float(t), None if w is None else float(w)) for s, d, t, w in body["edges"]))


def frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Scan:
    """What a log file holds: the header payload, the entries' payloads, where the valid data ends."""

    header: dict[str, Any] | None
    payloads: list[bytes]
    end: int
    torn_bytes: int


def scan(data: bytes, path: Path) -> Scan:
    """Split the file's bytes into frames. Raises EdgeLogError on a wrong magic or on a bad frame
    followed by more data (naming its offset); a bad last frame is reported as `torn_bytes`."""
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):  # the crash hit the very first write
            return Scan(None, [], 0, len(data))
        raise EdgeLogError(f"{path} is not a graph-distill edge log (bad magic); point SERVE_EDGE_LOG at another path",
                           {"path": str(path), "offset": 0})
    offset, frames = len(MAGIC), list[bytes]()
    while offset < len(data):
        bad = _bad_frame(data, offset)
        if bad is not None:
            if bad == "torn" or not data[offset:].strip(b"\0") or _is_last(data, offset):
                return _split(frames, offset, len(data) - offset, path)
            raise EdgeLogError(f"{path} is corrupt at byte offset {offset} ({bad}) with acknowledged writes after it; "
                               "restore the log from a backup or move it aside (its writes are then lost)",
                               {"path": str(path), "offset": offset})
        length = FRAME.unpack_from(data, offset)[0]
        frames.append(data[offset + FRAME.size: offset + FRAME.size + length])
        offset += FRAME.size + length
    return _split(frames, offset, 0, path)


def _bad_frame(data: bytes, offset: int) -> str | None:
    """None for a good frame at `offset`; "torn" when it runs past the end; else what is wrong."""
    if offset + FRAME.size > len(data):
        return "torn"
    length, crc = FRAME.unpack_from(data, offset)
    if length == 0 or length > MAX_PAYLOAD:
        return f"frame length {length}"
    if offset + FRAME.size + length > len(data):
        return "torn"
    if zlib.crc32(data[offset + FRAME.size: offset + FRAME.size + length]) != crc:
        return "crc32 mismatch"
    return None


def _is_last(data: bytes, offset: int) -> bool:
    """A frame with a sane length followed by nothing but zeros (a file system may extend a file with
    zeros before the data lands): its CRC failed because it was written partially."""
    length = FRAME.unpack_from(data, offset)[0]
    return bool(0 < length <= MAX_PAYLOAD and not data[offset + FRAME.size + length:].strip(b"\0"))


def _split(frames: list[bytes], end: int, torn: int, path: Path) -> Scan:
    if not frames:
        return Scan(None, [], end, torn)
    try:
        header = json.loads(frames[0])
    except ValueError:
        raise EdgeLogError(f"{path}: the header record is not JSON",
                           {"path": str(path), "offset": len(MAGIC)}) from None
    return Scan(header, frames[1:], end, torn)


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
        data = path.read_bytes()
        found = scan(data, path)
        if found.torn_bytes:
            log.warning("edge log %s: dropping a torn last record (%d bytes at offset %d, never acknowledged)",
                        path, found.torn_bytes, found.end)
        if found.header is not None:
            _check_header(found.header, header, path)
        entries = _decode_all(found.payloads, path)
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


def _decode_all(payloads: list[bytes], path: Path) -> list[Entry]:
    try:
        return [decode(p) for p in payloads]
    except (ValueError, KeyError, TypeError) as exc:  # a good CRC over a payload this reader cannot parse
        raise EdgeLogError(f"{path} holds a record this service cannot read ({exc}); was it written by another "
                           "release?", {"path": str(path)}) from None


def _check_header(found: dict[str, Any], expected: Header, path: Path) -> None:
    if found.get("format") != FORMAT:
        raise EdgeLogError(f"{path} has edge log format {found.get('format')!r}; this service reads format {FORMAT}",
                           {"path": str(path)})
    if found.get("bundle_digest") != expected.bundle_digest:
        raise EdgeLogError(
            f"{path} belongs to bundle {found.get('bundle_version')} but the served bundle is "
            f"{expected.bundle_version}; "
            "a log is replayed only onto the bundle it was written for: fold it into a new bundle with "
            "`distill refresh --edge-log`, or point SERVE_EDGE_LOG at a new path",
            {"path": str(path), "log_bundle_version": found.get("bundle_version"),
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
