"""bundle.publish: the staged bundle replaces `out` in one step (RENAME_EXCHANGE) or, where that is
missing, by two renames that the next run can undo; stale folders of dead jobs are cleaned, live
jobs' folders never; OSErrors become one-line PublishErrors with `out` untouched."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from bundle import publish
from bundle.publish import PublishError, clean_stale, staging

linux_only = pytest.mark.skipif(publish._RENAMEAT2 is None, reason="renameat2 is Linux-only (glibc >= 2.28)")


def _bundle(root: Path, text: str) -> Path:
    """A stand-in bundle: a directory with a file, a subdirectory and an array."""
    (root / "graph").mkdir(parents=True)
    (root / "manifest.json").write_text(text)
    np.save(root / "graph" / "features.npy", np.full((4, 2), len(text), dtype=np.float32))
    return root


def _write(staged: Path, text: str) -> None:
    _bundle(staged, text)


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _owned(out: Path, kind: str, pid: int, host: str | None = None) -> Path:
    path = out.parent / f".{out.name}.{kind}-{host or publish.host_tag()}-{pid}-x1y2"
    _bundle(path, f"{kind} of {pid}")
    return path


@pytest.fixture
def no_exchange(monkeypatch):
    """A system without renameat2: the two-rename fallback."""
    monkeypatch.setattr(publish, "_RENAMEAT2", None)


def test_new_bundle_is_renamed_into_place_and_readable_by_others(tmp_path):
    out = tmp_path / "deep" / "b"
    with staging(out, force=False) as staged:
        assert staged.parent == out.parent and staged.name.startswith(f".b.tmp-{publish.host_tag()}-{os.getpid()}-")
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "new"
    assert out.stat().st_mode & 0o777 == 0o755
    assert _siblings(out) == []


@linux_only
def test_force_swaps_in_one_exchange_and_deletes_the_old(tmp_path, monkeypatch):
    out = _bundle(tmp_path / "b", "old")
    calls = []
    real = publish._renameat2
    monkeypatch.setattr(publish, "_renameat2", lambda s, d, f: calls.append(f) or real(s, d, f))
    monkeypatch.setattr(os, "rename", lambda *a: pytest.fail("os.rename used although RENAME_EXCHANGE works"))
    with staging(out, force=True) as staged:
        _write(staged, "new")
    assert calls == [publish.RENAME_EXCHANGE]
    assert (out / "manifest.json").read_text() == "new"
    assert _siblings(out) == []


def test_a_reader_holding_the_old_bundle_keeps_reading_it(tmp_path):
    # What the service holds: an open file and a memory-mapped array of the superseded bundle.
    out = _bundle(tmp_path / "b", "old")
    features = np.load(out / "graph" / "features.npy", mmap_mode="r")
    with (out / "manifest.json").open() as held:
        with staging(out, force=True) as staged:
            _write(staged, "new!")
        assert held.read() == "old"
    assert features[0, 0] == 3.0
    assert (out / "manifest.json").read_text() == "new!"


def test_fallback_two_renames_replace_the_bundle(tmp_path, no_exchange):
    out = _bundle(tmp_path / "b", "old")
    with staging(out, force=True) as staged:
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "new"
    assert _siblings(out) == []


def test_filesystem_without_exchange_falls_back(tmp_path, monkeypatch):
    def einval(*args):
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(publish, "_RENAMEAT2", einval)
    out = _bundle(tmp_path / "b", "old")
    with staging(out, force=True) as staged:
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "new" and _siblings(out) == []


def test_fallback_puts_the_old_bundle_back_when_the_second_rename_fails(tmp_path, monkeypatch, no_exchange):
    out = _bundle(tmp_path / "b", "old")
    real, seen = os.rename, []

    def rename(src, dst):
        seen.append(dst)
        if len(seen) == 2:
            raise OSError(errno.EIO, "Input/output error", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PublishError, match="previous bundle at .* is untouched"), staging(out, force=True) as staged:
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "old"
    assert _siblings(out) == []


def test_a_kill_between_the_fallback_renames_is_undone_by_the_next_run(tmp_path):
    out, pid = tmp_path / "b", _dead_pid()
    old = _owned(out, "old", pid)  # out renamed away, then the job was killed
    staged = _owned(out, "tmp", pid)
    cleaned = clean_stale(out)
    assert cleaned.restored == old and cleaned.removed == [staged]
    assert (out / "manifest.json").read_text().startswith("old of")
    assert _siblings(out) == []


def test_release_before_this_module_left_old_pid_folder(tmp_path):
    out = tmp_path / "b"
    legacy = _bundle(tmp_path / f".b.old-{_dead_pid()}", "previous")
    assert clean_stale(out).restored == legacy
    assert (out / "manifest.json").read_text() == "previous"


def test_existing_out_without_force_is_refused_and_kept(tmp_path):
    out = _bundle(tmp_path / "b", "old")
    with pytest.raises(PublishError, match="pass --force"), staging(out, force=False) as staged:
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "old"
    assert _siblings(out) == []


def test_disk_full_while_writing_is_one_line_and_keeps_the_old(tmp_path):
    out = _bundle(tmp_path / "b", "old")
    with pytest.raises(PublishError) as caught, staging(out, force=True) as staged:
        _write(staged, "new")
        raise OSError(errno.ENOSPC, "No space left on device", str(staged / "student.onnx"))
    message = caught.value.message
    assert "\n" not in message
    assert "No space left on device" in message and "student.onnx" in message
    assert f"previous bundle at {out} is untouched" in message and "free space" in message
    assert (out / "manifest.json").read_text() == "old"
    assert _siblings(out) == []


def test_other_errors_pass_through_unchanged(tmp_path):
    out = _bundle(tmp_path / "b", "old")
    with pytest.raises(KeyError), staging(out, force=True) as staged:
        _write(staged, "new")
        raise KeyError("a bug, not an OS error")
    assert (out / "manifest.json").read_text() == "old" and _siblings(out) == []


def test_unwritable_parent_is_a_publish_error(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(publish.tempfile, "mkdtemp", denied)
    with pytest.raises(PublishError, match="Permission denied.*make .* writable"), staging(tmp_path / "b", True):
        pytest.fail("the block must not run")


def test_clean_stale_removes_dead_jobs_folders_only(tmp_path):
    out = _bundle(tmp_path / "b", "current")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = _dead_pid()
        gone = [_owned(out, "tmp", dead), _owned(out, "old", dead), _bundle(tmp_path / f".b.old-{dead}", "x")]
        kept = [_owned(out, "tmp", live.pid), _owned(out, "old", os.getpid()),
                _owned(out, "tmp", dead, host="0badc0de"),  # another host's (container's) pid space
                _bundle(tmp_path / ".b.tmp-abcd1234", "x"),  # an older release's: no owner recorded
                _bundle(tmp_path / ".b.tmp-12345678", "x"),  # ... even when its random suffix is all digits
                _owned(tmp_path / "bb", "tmp", dead),  # another bundle's
                _bundle(tmp_path / f".b.tmp-{publish.host_tag()}-{dead}-x1y2.keep", "x")]
        cleaned = clean_stale(out)
        assert cleaned.restored is None
        assert sorted(cleaned.removed) == sorted(gone)
        assert [p.exists() for p in gone + kept] == [False] * len(gone) + [True] * len(kept)
        assert (out / "manifest.json").read_text() == "current"
    finally:
        live.kill()
        live.wait()


def test_two_concurrent_stagings_do_not_touch_each_other(tmp_path):
    out = tmp_path / "b"
    with staging(out, force=True) as first:
        with staging(out, force=True) as second:
            assert clean_stale(out).removed == []
            _write(second, "second")
        assert first.is_dir()
        _write(first, "first")
    assert (out / "manifest.json").read_text() == "first" and _siblings(out) == []


def test_free_bytes_asks_the_nearest_existing_ancestor(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: asked.append(Path(p)) or usage(100, 90, 10))
    assert publish.free_bytes(tmp_path / "not" / "yet" / "b") == 10
    assert asked == [tmp_path.resolve()]
