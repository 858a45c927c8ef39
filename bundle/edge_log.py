"""The edge log's format, read side: what the service appends (serve/edge_log.py writes it) and
`distill refresh --edge-log` folds into the next bundle. Torch-free, numpy/stdlib only, so the
service and the job read a log with the same code (docs/bundle.md, "The edge log").

File layout: the magic line `graph-distill edge log v1\\n`, then framed records. A frame is
`length (u32 LE) | crc32 of the payload (u32 LE) | payload` and a payload is compact UTF-8 JSON:
record 0 is the header (the bundle the log belongs to), every later record is one acknowledged
write (`Entry`: new nodes and directed edges, as the request resolved them).

A torn or corrupt *last* frame (a crash in the middle of an append, which was therefore never
acknowledged) is reported as `torn_bytes` and left out; a bad frame with valid data after it is
corruption of acknowledged writes, and the log is refused with the byte offset.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.errors import BundleInvalid
from bundle.ids import NodeKey

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
    """Entry -> payload bytes (JSON: floats written as Python's shortest round-trip repr); `decode`'s inverse."""
    body = {"seq": entry.seq, "nodes": [[n.id, list(n.features)] for n in entry.nodes],
            "edges": [[e.src, e.dst, e.time, e.weight] for e in entry.edges]}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def frame(payload: bytes) -> bytes:
    """One frame: length and CRC32 of `payload` (FRAME), then the payload."""
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Entry:
    """Payload bytes -> Entry. ValueError / KeyError / TypeError on a payload that is not one."""
    body = json.loads(payload)
    return Entry(int(body["seq"]), tuple(NodeRecord(i, tuple(x)) for i, x in body["nodes"]),
                 tuple(EdgeRecord(s, d, float(t), None if w is None else float(w)) for s, d, t, w in body["edges"]))


@dataclass(frozen=True)
class Scan:
    """What a log file holds: the header payload, the entries' payloads, where the valid data ends."""

    header: dict[str, Any] | None
    payloads: list[bytes]
    end: int
    torn_bytes: int


def scan(data: bytes, path: Path) -> Scan:
    """Split the file's bytes into frames. Raises BundleInvalid on a wrong magic (detail problem
    "magic") or on a bad frame followed by more data (problem "corrupt", naming its offset); a bad
    last frame is reported as `torn_bytes`."""
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):  # the crash hit the very first write
            return Scan(None, [], 0, len(data))
        raise BundleInvalid(f"{path} is not a graph-distill edge log (bad magic)",
                            {"path": str(path), "offset": 0, "problem": "magic"})
    offset, frames = len(MAGIC), list[bytes]()
    while offset < len(data):
        bad = _bad_frame(data, offset)
        if bad is not None:
            if bad == "torn" or not data[offset:].strip(b"\0") or _is_last(data, offset):
                return _split(frames, offset, len(data) - offset, path)
            raise BundleInvalid(f"{path} is corrupt at byte offset {offset} ({bad}) with acknowledged writes after "
                                "it; restore the log from a backup or move it aside (its writes are then lost)",
                                {"path": str(path), "offset": offset, "problem": "corrupt"})
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
    length: int = FRAME.unpack_from(data, offset)[0]
    return bool(0 < length <= MAX_PAYLOAD and not data[offset + FRAME.size + length:].strip(b"\0"))


def _split(frames: list[bytes], end: int, torn: int, path: Path) -> Scan:
    if not frames:
        return Scan(None, [], end, torn)
    try:
        header = json.loads(frames[0])
    except ValueError:
        raise BundleInvalid(f"{path}: the header record is not JSON",
                            {"path": str(path), "offset": len(MAGIC), "problem": "header"}) from None
    return Scan(header, frames[1:], end, torn)


def header_of(found: dict[str, Any], path: Path) -> Header:
    """A scanned header payload -> Header; BundleInvalid (problem "format") for another format."""
    if found.get("format") != FORMAT:
        raise BundleInvalid(f"{path} has edge log format {found.get('format')!r}; this release reads format {FORMAT}",
                            {"path": str(path), "problem": "format"})
    version, digest = found.get("bundle_version"), found.get("bundle_digest")
    if not isinstance(version, str) or not isinstance(digest, str):
        raise BundleInvalid(f"{path}: the header record names no bundle_version / bundle_digest",
                            {"path": str(path), "problem": "header"})
    return Header(version, digest)


def decode_all(payloads: list[bytes], path: Path) -> list[Entry]:
    """Every entry payload -> Entry, in log order; BundleInvalid (problem "record") when one does not parse."""
    try:
        return [decode(p) for p in payloads]
    except (ValueError, KeyError, TypeError) as exc:  # a good CRC over a payload this reader cannot parse
        raise BundleInvalid(f"{path} holds a record this release cannot read ({exc}); was it written by another "
                            "release?", {"path": str(path), "problem": "record"}) from None


@dataclass(frozen=True)
class Contents:
    """A log as replayed: its header (None when the crash hit before it was durable), the
    acknowledged entries in order, where the valid data ends, and the torn bytes left out after it."""

    header: Header | None
    entries: list[Entry]
    end: int
    torn_bytes: int


def read(data: bytes, path: Path) -> Contents:
    """The tolerant read of a log's bytes, shared by the service's replay and `distill refresh
    --edge-log`: scan, header, entries. Raises BundleInvalid (detail "problem": magic, corrupt,
    header, format or record)."""
    found = scan(data, path)
    header = None if found.header is None else header_of(found.header, path)
    return Contents(header, decode_all(found.payloads, path), found.end, found.torn_bytes)
