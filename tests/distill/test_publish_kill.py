"""`distill run --force` under SIGKILL, disk full and a nearly full disk: `--out` always holds a
complete bundle (the old or the new), a later run cleans what a killed one left, and OS errors end
with exit 2 and one line."""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest

from bundle import files
from distill.cli import main

REPO = Path(__file__).resolve().parents[2]
# The smallest job that still runs every stage: one teacher and one student family, two epochs.
TINY = ["--dataset", "synthetic:nodes=100,features=4", "--teacher", "gcn", "--teacher-layers", "2",
        "--teacher-hidden", "8", "--student", "gcn", "--student-hidden", "8", "--epochs", "2", "--patience", "1",
        "--alpha", "0.5", "--temperature", "1", "--tail-adjust", "off", "--quiet", "--threads", "1"]

# A fork server: it imports the job once (torch's import is most of a tiny run's time, and it starts
# no threads), then for each request forks a child that runs `distill run --force` from its argv,
# with every filesystem step of the publish block counted and a SIGKILL sent to itself just before
# step K (K = 0: never). The counting lives only here: production code has no kill hooks.
SERVER = textwrap.dedent('''
    import builtins, io, os, shutil, signal, sys
    from contextlib import contextmanager

    from distill import cli, pipeline

    state = {"on": False, "step": 0, "kill_at": 0}

    def step(what):
        if state["on"]:
            state["step"] += 1
            if state["step"] == state["kill_at"]:
                print(f"[kill] before step {state['step']}: {what}", file=sys.stderr, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

    def counted(owner, name):
        real = getattr(owner, name)
        def call(*args, **kwargs):
            step(f"{name} {args[:2]}")
            return real(*args, **kwargs)
        setattr(owner, name, call)

    def patch(exchange):
        for name in ("mkdir", "rename", "replace", "chmod", "unlink", "rmdir", "fsync"):
            counted(os, name)
        counted(shutil, "rmtree")
        try:
            from bundle import publish
            counted(publish, "_renameat2")
            if not exchange:
                publish._RENAMEAT2 = None  # a system without renameat2: the two-rename fallback
        except ImportError:  # a release before bundle.publish
            pass
        real_open = builtins.open
        def opener(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                step(f"open {file} {mode}")
            return real_open(file, mode, *args, **kwargs)
        builtins.open = io.open = opener
        real_staging = pipeline.staging
        @contextmanager
        def staging(out, force):
            state["on"] = True
            with real_staging(out, force) as staged:
                yield staged
            step("after the publish block")
            state["on"] = False
        pipeline.staging = staging

    def child(kill_at, exchange, seed, out, log):
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        state["kill_at"] = kill_at
        patch(exchange)
        code = 1
        try:
            code = cli.main(["run", "--out", out, "--force", "--seed", seed, *sys.argv[1:]])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    for line in sys.stdin:
        kill_at, exchange, seed, out, log = line.rstrip("\\n").split("\\t")
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(int(kill_at), exchange == "1", seed, out, log)
        _, status = os.waitpid(pid, 0)
        print(pid, os.waitstatus_to_exitcode(status), flush=True)
''')


class Jobs:
    """Runs `distill run --force` in fresh child processes of one fork server."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "kill_server.py"
        script.write_text(SERVER)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.proc = subprocess.Popen([sys.executable, str(script), *TINY], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)

    def run(self, out: Path, seed: int, kill_at: int, exchange: bool = True) -> tuple[int, int]:
        """(pid, exit code: -9 when killed) of one `distill run --force --seed SEED` child."""
        log = self.logs / f"k{kill_at}-s{seed}-x{exchange:d}.log"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{kill_at}\t{exchange:d}\t{seed}\t{out}\t{log}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        assert ready, f"job k={kill_at} did not finish in 300 s"
        answer = self.proc.stdout.readline().split()
        assert len(answer) == 2, f"the fork server died: {self.proc.poll()}"
        pid, code = map(int, answer)
        assert code in (0, -signal.SIGKILL), (code, log.read_text())
        return pid, code

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _version(out: Path) -> str:
    files.open_bundle(out)  # raises BundleInvalid unless `out` is a complete, verified bundle
    return json.loads((out / "manifest.json").read_text())["version"]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.slow
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_kill_at_every_publish_step_leaves_a_bundle_and_the_next_run_cleans_up(tmp_path, exchange):
    """Kill before every filesystem step of the publish block, for K = 1, 2, ... until a run
    completes. With RENAME_EXCHANGE the path opens as a bundle after every kill. With the fallback,
    exactly one kill point (between its two renames) leaves the path empty, and what the next run
    does first (clean_stale, from check_target) puts the old bundle back."""
    out, template = tmp_path / "jobs" / "b", tmp_path / "old-bundle"
    jobs = Jobs(tmp_path)
    try:
        assert jobs.run(out, seed=1, kill_at=0)[1] == 0
        shutil.copytree(out, template)
        old, seen, windows, stale = _version(out), [], 0, []
        for kill_at in range(1, 200):
            shutil.rmtree(out)  # every kill point replaces the same old bundle
            shutil.copytree(template, out)
            pid, code = jobs.run(out, seed=0, kill_at=kill_at, exchange=exchange)
            if not exchange and not out.exists():
                windows += 1
                _next_run_restores(out, old)
            seen.append(_version(out))  # the path opens as a bundle
            # What the previous killed run left was cleaned by this run before it trained; all that
            # may be left now is this run's own.
            stale += [(kill_at, name) for name in _leftovers(out) if f"-{pid}-" not in name]
            if code == 0:
                break
        assert code == 0, "every step up to 199 was killed: the loop never saw a complete run"
        new = seen[-1]
        flip = seen.index(new)
        assert new != old and flip >= 1 and seen == [old] * flip + [new] * (len(seen) - flip), seen
        assert windows == (0 if exchange else 1)
        assert stale == []
        assert _leftovers(out) == []
        assert len(seen) >= 20, "fewer kill points than the publish block's writes: the counting is broken"
    finally:
        jobs.close()


def _next_run_restores(out: Path, old: str) -> None:
    from bundle.publish import clean_stale

    # The old bundle sits in the killed job's folder (`.NAME.publish-PID-*/old`), its lock released.
    (leftover,) = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and (p / "old").is_dir()]
    assert clean_stale(out).restored == leftover
    assert _version(out) == old


def _tiny_bundle(out: Path, *extra: str) -> dict[str, str]:
    assert main(["run", "--out", str(out), *TINY, *extra]) == 0
    return files.file_hashes(out)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("distill: error:")]


def test_disk_full_while_publishing_exits_2_with_one_line_and_keeps_the_old_bundle(tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    before = _tiny_bundle(out, "--seed", "1")
    real = Path.write_bytes

    def full(self, data):
        if self.name == "student.onnx":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--force", *TINY]) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "student.onnx" in lines[0], lines
    assert f"the previous bundle at {out} is untouched" in lines[0] and "free space" in lines[0], lines
    assert files.file_hashes(out) == before
    assert _leftovers(out) == []


def test_nearly_full_disk_is_refused_before_training(tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, (1 << 30) - (1 << 20), 1 << 20))
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert "needs about 32." in lines[0] and "has 1.0 MiB" in lines[0] and "another disk" in lines[0], lines
    assert "[teacher]" not in err and "[data]" not in err  # refused before the data load and any training
    assert not out.exists() and list(tmp_path.iterdir()) == []
