"""The edge log (serve/edge_log.py): replay, a torn last record truncated (never a crash), corruption
before the end refused with its offset, a log bound to its bundle, fsyncs shared by concurrent writers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from bundle.edge_log import MAGIC, EdgeRecord, Entry, Header, NodeRecord, encode
from serve.edge_log import EdgeLog
from serve.errors import EdgeLogError

HEADER = Header("v1-abc", "d" * 64)


def entry(seq: int) -> Entry:
    return Entry(seq, (NodeRecord(f"n{seq}", (0.5, -1.25)),) if seq % 2 else (),
                 (EdgeRecord(seq, seq + 1, 1000.0 + seq, None if seq % 3 else 2.5),))


def write(path: Path, count: int) -> list[int]:
    """Append `count` entries, each synced -> the file offset after each."""
    log, replayed = EdgeLog.open(path, HEADER)
    assert replayed == []
    ends = []
    for seq in range(1, count + 1):
        ends.append(log.append(encode(entry(seq))))
        log.sync(ends[-1])
    log.close()
    return ends


def test_replay_gives_back_every_entry_in_order(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    write(path, 5)
    log, replayed = EdgeLog.open(path, HEADER)
    assert replayed == [entry(i) for i in range(1, 6)]
    assert log.seq == 5 and log.written == path.stat().st_size


@pytest.mark.parametrize("cut", [1, 5, 8, 20])
def test_a_torn_last_record_is_truncated_with_a_warning(tmp_path: Path, cut: int,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    data = path.read_bytes()
    path.write_bytes(data[: ends[1] + cut])  # the third frame only partly on disk
    log, replayed = EdgeLog.open(path, HEADER)
    assert [e.seq for e in replayed] == [1, 2]
    assert path.stat().st_size == ends[1] and "torn last record" in caplog.text
    end = log.append(encode(entry(3)))  # appends continue where the valid data ends
    log.sync(end)
    log.close()
    assert [e.seq for e in EdgeLog.open(path, HEADER)[1]] == [1, 2, 3]


def test_a_last_record_with_a_bad_checksum_or_a_zero_tail_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data) + b"\0" * 64)
    assert [e.seq for e in EdgeLog.open(path, HEADER)[1]] == [1, 2]
    assert path.stat().st_size == ends[1]


def test_corruption_before_the_end_refuses_to_start_naming_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    ends = write(path, 3)
    data = bytearray(path.read_bytes())
    data[ends[0] + 10] ^= 0xFF  # inside the second frame's payload; the third is intact
    path.write_bytes(bytes(data))
    with pytest.raises(EdgeLogError, match=f"corrupt at byte offset {ends[0]} \\(crc32 mismatch\\)") as caught:
        EdgeLog.open(path, HEADER)
    assert caught.value.detail["offset"] == ends[0]
    assert path.read_bytes() == bytes(data)  # nothing truncated


def test_a_log_of_another_bundle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    write(path, 1)
    with pytest.raises(EdgeLogError, match="belongs to bundle v1-abc but the served bundle is v2"):
        EdgeLog.open(path, Header("v2", "e" * 64))


def test_a_file_that_is_not_a_log_is_refused_and_a_torn_header_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "edges.log"
    path.write_bytes(b"something else entirely\n")
    with pytest.raises(EdgeLogError, match="bad magic"):
        EdgeLog.open(path, HEADER)
    path.write_bytes(MAGIC[:7])  # the crash hit the very first write
    log, replayed = EdgeLog.open(path, HEADER)
    assert replayed == [] and path.read_bytes().startswith(MAGIC)


def test_concurrent_writers_share_fsyncs(tmp_path: Path) -> None:
    log, _ = EdgeLog.open(tmp_path / "edges.log", HEADER)
    start = log.fsyncs
    barrier = threading.Barrier(8)

    def writer(seq: int) -> None:
        barrier.wait()
        for k in range(10):
            log.sync(log.append(encode(entry(seq * 100 + k))))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.synced == log.written
    assert 1 <= log.fsyncs - start <= 80  # never more than one per write; fewer when writers overlap
    log.close()
    assert len(EdgeLog.open(tmp_path / "edges.log", HEADER)[1]) == 80
