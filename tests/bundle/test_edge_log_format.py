"""The edge log's read side (bundle/edge_log.py), on logs the service's own writer appended: every
entry back in order, a torn last record left out and measured, corruption before the end refused
with its offset and problem, and no torch (or service) behind it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.edge_log import FORMAT, MAGIC, EdgeRecord, Entry, Header, NodeRecord, encode, frame, read
from bundle.errors import BundleInvalid
from serve.edge_log import EdgeLog

HEADER = Header("v1-abc", "d" * 64)


def entry(seq: int) -> Entry:
    return Entry(seq, (NodeRecord(f"n{seq}", (0.5, -1.25)),), (EdgeRecord("a", f"n{seq}", 1000.0 + seq, 2.5),))


def write(path: Path, count: int) -> list[int]:
    """The service's writer appends `count` entries -> the file offset after each."""
    log, _ = EdgeLog.open(path, HEADER)
    ends = [log.append(encode(entry(seq))) for seq in range(1, count + 1)]
    log.sync(ends[-1])
    log.close()
    return ends


def test_read_gives_back_the_header_and_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    got = read(path.read_bytes(), path)
    assert got.header == HEADER and got.entries == [entry(1), entry(2), entry(3)]
    assert got.end == ends[-1] and got.torn_bytes == 0


def test_a_torn_last_record_is_left_out_and_measured(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    data = path.read_bytes()[: ends[2] - 3]
    got = read(data, path)
    assert [e.seq for e in got.entries] == [1, 2] and got.end == ends[1] and got.torn_bytes == ends[2] - 3 - ends[1]


def test_corruption_before_the_end_is_refused_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    data = bytearray(path.read_bytes())
    data[ends[0] + 10] ^= 0xFF
    with pytest.raises(BundleInvalid, match=f"corrupt at byte offset {ends[0]} \\(crc32 mismatch\\)") as caught:
        read(bytes(data), path)
    assert caught.value.detail == {"path": str(path), "offset": ends[0], "problem": "corrupt"}


def test_another_format_and_a_foreign_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    with pytest.raises(BundleInvalid, match="bad magic"):
        read(b"something else\n", path)
    assert read(MAGIC[:5], path).header is None  # the crash hit the very first write
    newer = MAGIC + frame(json.dumps({**HEADER.payload(), "format": FORMAT + 8}).encode())
    with pytest.raises(BundleInvalid, match="edge log format 9; this release reads format 1"):
        read(newer, path)


def test_reading_a_log_needs_neither_torch_nor_the_service() -> None:
    code = ("import sys, bundle.edge_log; "
            "sys.exit(sorted(m for m in ('torch', 'serve', 'onnxruntime') if m in sys.modules) != [])")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
