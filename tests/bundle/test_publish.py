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
from collections.abc import Iterator
from contextlib import contextmanager
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


def _job(out: Path, pid: int, *bundles: str) -> Path:
    """A job's folder as `staging` makes it, `.NAME.publish-PID-RANDOM/` with its lock file and a
    bundle in each of `bundles` ("new", "old"); no process holds its lock unless a test takes it."""
    job = out.parent / f".{out.name}.publish-{pid}-x1y2"
    job.mkdir(parents=True)
    (job / publish.LOCK).touch()
    for entry in bundles:
        _bundle(job / entry, f"{entry} of {pid}")
    return job


def _legacy(out: Path, kind: str, pid: int, host: str | None = None) -> Path:
    """A folder of the release before the lock: `.NAME.tmp|old-HOST-PID-RANDOM`."""
    path = out.parent / f".{out.name}.{kind}-{host or publish._legacy_host_tag()}-{pid}-x1y2"
    return _bundle(path, f"{kind} of {pid}")


# Another process that holds the flock of argv[1] until its stdin closes.
HOLDER = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
          "print('held', flush=True); sys.stdin.read()")


@contextmanager
def _held_elsewhere(lock: Path) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "held\n"
        yield
    finally:
        proc.stdin.close()
        proc.wait()


@pytest.fixture
def no_exchange(monkeypatch):
    """A system without renameat2: the two-rename fallback."""
    monkeypatch.setattr(publish, "_RENAMEAT2", None)


def test_new_bundle_is_renamed_into_place_and_readable_by_others(tmp_path):
    out = tmp_path / "deep" / "b"
    with staging(out, force=False) as staged:
        assert staged.name == "new" and staged.parent.parent == out.parent
        assert staged.parent.name.startswith(f".b.publish-{os.getpid()}-")
        assert (staged.parent / "lock").is_file()
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
    # What a reader may hold of the superseded bundle: an open file and a memory-mapped array.
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


def test_the_old_bundle_stays_in_the_job_folder_when_putting_it_back_fails(tmp_path, monkeypatch, no_exchange):
    out = _bundle(tmp_path / "b", "old")
    real, seen = os.rename, []

    def rename(src, dst):
        seen.append(dst)
        if len(seen) >= 2:  # the second rename and the one putting the old bundle back
            raise OSError(errno.EIO, "Input/output error", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PublishError, match="nothing was written"), staging(out, force=True) as staged:
        _write(staged, "new")
    monkeypatch.undo()
    (job,) = [p for p in tmp_path.iterdir() if p.name.startswith(".b.publish-")]
    assert (job / "old" / "manifest.json").read_text() == "old"  # its only copy is not deleted
    assert clean_stale(out) == publish.Cleaned(restored=job, removed=[job])
    assert (out / "manifest.json").read_text() == "old" and _siblings(out) == []


@pytest.mark.parametrize("pid", [1, os.getpid()], ids=["pid-1", "this-pid"])
def test_a_kill_between_the_fallback_renames_is_undone_whatever_pid_the_name_says(tmp_path, pid):
    # In a container every job is PID 1, and a restarted container keeps its hostname: the lock,
    # free since its holder died, is what says the job is gone.
    out = tmp_path / "b"
    job = _job(out, pid, "old", "new")  # out moved into the job's folder, then the job was killed
    assert clean_stale(out) == publish.Cleaned(restored=job, removed=[job])
    assert (out / "manifest.json").read_text() == f"old of {pid}"
    assert _siblings(out) == []


def test_a_live_job_between_its_fallback_renames_is_left_alone(tmp_path):
    out = tmp_path / "b"
    job = _job(out, _dead_pid(), "old", "new")
    with _held_elsewhere(job / "lock"):
        assert clean_stale(out) == publish.Cleaned()
    assert not out.exists() and (job / "old" / "manifest.json").is_file() and (job / "new").is_dir()


def test_previous_release_old_folder_named_pid_1_is_restored(tmp_path):
    out = tmp_path / "b"
    old = _legacy(out, "old", 1)  # pid 1 is alive here, as in every container
    assert clean_stale(out).restored == old
    assert (out / "manifest.json").read_text() == "old of 1" and _siblings(out) == []


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


def test_a_folder_whose_lock_is_held_elsewhere_is_never_removed(tmp_path):
    out = _bundle(tmp_path / "b", "current")
    dead = _dead_pid()
    live = [_job(out, dead, "new"), _job(tmp_path / "c", 1, "new", "old")]
    with _held_elsewhere(live[0] / "lock"), _held_elsewhere(live[1] / "lock"):
        assert clean_stale(out) == clean_stale(tmp_path / "c") == publish.Cleaned()
    assert [(p / "new" / "manifest.json").is_file() for p in live] == [True, True]
    assert (live[1] / "old" / "manifest.json").is_file()


def test_a_folder_whose_lock_is_free_is_removed_whatever_pid_the_name_says(tmp_path):
    outs = [_bundle(tmp_path / "b", "current"), tmp_path / "c", tmp_path / "d"]
    jobs = [_job(outs[0], 1, "new"), _job(outs[1], os.getpid(), "new", "old"), _job(outs[2], _dead_pid())]
    cleaned = [clean_stale(out) for out in outs]
    assert [c.removed for c in cleaned] == [[job] for job in jobs]
    assert [job.exists() for job in jobs] == [False] * 3
    assert cleaned[1].restored == jobs[1] and (outs[1] / "manifest.json").read_text() == f"old of {os.getpid()}"
    assert (outs[0] / "manifest.json").read_text() == "current"


def test_job_folders_without_a_lock_file_are_removed_only_when_empty(tmp_path):
    out = tmp_path / "b"
    empty = out.parent / ".b.publish-7-empty"  # a job killed between its mkdir and its lock file
    empty.mkdir()
    odd = _bundle(out.parent / ".b.publish-7-odd", "not ours to judge")
    assert clean_stale(out).removed == [empty]
    assert not empty.exists() and odd.is_dir()


def test_earlier_releases_folders_are_removed_only_when_their_pid_is_dead_here(tmp_path):
    out = _bundle(tmp_path / "b", "current")
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = _dead_pid()
        gone = [_legacy(out, "tmp", dead), _legacy(out, "old", dead), _bundle(tmp_path / f".b.old-{dead}", "x")]
        kept = [_legacy(out, "tmp", live.pid), _legacy(out, "old", 1),
                _legacy(out, "tmp", dead, host="0badc0de"),  # another host's (container's) pid space
                _bundle(tmp_path / ".b.tmp-abcd1234", "x"),  # an older release's: no owner recorded
                _bundle(tmp_path / ".b.tmp-12345678", "x"),  # ... even when its random suffix is all digits
                _legacy(tmp_path / "bb", "tmp", dead),  # another bundle's
                _bundle(tmp_path / f".b.tmp-{publish._legacy_host_tag()}-{dead}-x1y2.keep", "x")]
        cleaned = clean_stale(out)
        assert cleaned.restored is None
        assert sorted(cleaned.removed) == sorted(gone)
        assert [p.exists() for p in gone + kept] == [False] * len(gone) + [True] * len(kept)
        assert (out / "manifest.json").read_text() == "current"
    finally:
        live.kill()
        live.wait()


def test_another_process_cleaning_never_touches_a_live_staging(tmp_path):
    out = _bundle(tmp_path / "b", "old")
    code = f"from pathlib import Path; from bundle.publish import clean_stale; print(clean_stale(Path({str(out)!r})))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with staging(out, force=True) as staged:
        _write(staged, "new")
        other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert other.stdout.strip() == "Cleaned(restored=None, removed=[])"
        assert (staged / "manifest.json").read_text() == "new"
    assert (out / "manifest.json").read_text() == "new" and _siblings(out) == []


def test_a_cleaner_that_takes_the_job_folder_before_its_lock_only_costs_a_retry(tmp_path, monkeypatch):
    out, made = tmp_path / "b", []
    real = publish.tempfile.mkdtemp

    def mkdtemp(**kwargs):
        made.append(Path(real(**kwargs)))
        if len(made) == 1:  # a concurrent run cleans right after the mkdir: the folder is empty
            assert clean_stale(out).removed == [made[0]]
        return str(made[-1])

    monkeypatch.setattr(publish.tempfile, "mkdtemp", mkdtemp)
    with staging(out, force=False) as staged:
        assert staged.parent == made[1]
        _write(staged, "new")
    assert len(made) == 2 and (out / "manifest.json").read_text() == "new" and _siblings(out) == []


def test_a_cleaner_that_locks_first_and_removes_the_folder_only_costs_a_retry(tmp_path, monkeypatch):
    out, waits = tmp_path / "b", []
    real = publish.fcntl.flock

    def flock(fd, op):
        if not op & publish.fcntl.LOCK_NB:  # the job's lock: a concurrent run locks first, and removes
            (job,) = [p for p in tmp_path.iterdir() if p.name.startswith(".b.publish-")]  # the folder
            waits.append(job)
            if len(waits) == 1:
                assert clean_stale(out).removed == [waits[0]]
        real(fd, op)

    monkeypatch.setattr(publish.fcntl, "flock", flock)
    with staging(out, force=False) as staged:
        assert staged.parent == waits[1] != waits[0]
        _write(staged, "new")
    assert (out / "manifest.json").read_text() == "new" and _siblings(out) == []


def test_a_filesystem_without_locks_fails_the_publish_and_keeps_the_old(tmp_path, monkeypatch):
    out = _bundle(tmp_path / "b", "old")

    def refused(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(publish.fcntl, "flock", refused)
    with pytest.raises(PublishError, match="No locks available.*previous bundle .* untouched"), staging(out, True):
        pytest.fail("the block must not run")
    assert _siblings(out) == []
    kept = _job(out, _dead_pid(), "new")
    assert clean_stale(out) == publish.Cleaned() and kept.is_dir()  # its owner cannot be known


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
