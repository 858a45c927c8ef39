"""Publishing a bundle: the path a user names always holds a complete bundle, old or new.

The job writes into a staging directory next to `out` and, once the bundle reads back, puts it in
place. With `--force` the old bundle is replaced; the question is how to do that without an instant
where `out` holds nothing (two renames: out -> old, staged -> out) or half of each.

Design: on Linux, `renameat2(staged, out, RENAME_EXCHANGE)` swaps the two directory entries in one
atomic step (Linux >= 3.15; ext4, xfs, btrfs, tmpfs, overlayfs and others support it). `out` stays
a plain directory, as in every earlier release, so nothing that reads it changes: the service opens
it by path (`serve.bundle.load`, POST /admin/reload), and a plain directory from an older release
is replaced in the same single step. The superseded bundle, now at the staging name, is deleted at
once; a service that still has it open keeps working, since onnxruntime's session and the
memory-mapped arrays hold their own descriptors (Linux frees the blocks when the last one closes).

The alternative, versioned directories behind an atomically swapped symlink, was not chosen: the
first `--force` onto an existing plain directory cannot become a symlink atomically anyway, tools
that copy or mount `out` treat a symlink differently from a directory, and the old versions would
need a retention policy of their own.

Where RENAME_EXCHANGE is unavailable (not Linux, a libc without renameat2, or a filesystem that
answers EINVAL, e.g. some network and FUSE filesystems), the two-rename path is used: out ->
`.NAME.old-*`, staged -> out. A process killed between those two renames leaves nothing at `out`
for that instant; `clean_stale` (run by the job before it starts any work) renames the orphaned
old bundle back, so the next run finds the path as it was.

Staging and superseded directories carry their owner in the name, `.NAME.tmp-HOST-PID-RANDOM` and
`.NAME.old-HOST-PID-RANDOM` (HOST: 8 hex digits of the host name's sha256, so containers sharing a
volume, each with its own pid space, never judge each other's pids). `clean_stale` removes only
those whose host is this one and whose pid is dead, so two concurrent jobs never delete each
other's staging. A reused pid only delays the cleanup (the directory is kept while that pid lives).
Staging directories from earlier releases (`.NAME.tmp-XXXXXXXX`, no owner) are left alone.

Every file is fsynced before the swap and the parent directory after it, so a power cut also
leaves the old or the new bundle, not a new directory of empty files.

Any OSError while staging or swapping (disk full, permission denied, ...) is raised as
`PublishError` with one line that says what failed and that the previous bundle is untouched; the
staging directory is removed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class PublishError(Exception):
    """The bundle could not be written or put in place (an OSError underneath). `out` holds what it
    held before."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _libc_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.4
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _libc_renameat2()


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags) -> True; False when this system or filesystem lacks it (then the
    caller falls back to os.rename). Any other failure raises OSError."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel, or a filesystem without the flag
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _prefix(out: Path, kind: str) -> str:
    return f".{out.name}.{kind}-{host_tag()}-{os.getpid()}-"


def _owner_pattern(out: Path) -> re.Pattern[str]:
    # The second alternative is the superseded bundle of releases before this module (`.NAME.old-PID`,
    # written on this host): a kill between their two renames left the only copy of the bundle there.
    name = re.escape(out.name)
    return re.compile(rf"^\.{name}\.(?:(tmp|old)-([0-9a-f]{{8}})-(\d+)-\w+|old-(\d+))$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid: keep it
        return True
    return True


@dataclass
class Cleaned:
    """What `clean_stale` did: the orphaned old bundle it renamed back to `out`, if any, and the
    directories of dead jobs it removed."""

    restored: Path | None = None
    removed: list[Path] = field(default_factory=list)


def _dead_siblings(out: Path) -> list[tuple[str, Path]]:
    """(kind, path) of `out`'s staging/old siblings owned by a dead process on this host."""
    pattern, here = _owner_pattern(out), host_tag()
    try:
        entries = list(out.parent.iterdir())
    except OSError:  # no parent yet, or unreadable: nothing of ours can be there
        return []
    dead = []
    for path in entries:
        match = pattern.match(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        kind, host, pid, legacy_pid = match.groups()
        if (host is None or host == here) and not _alive(int(pid or legacy_pid)):
            dead.append((kind or "old", path))
    return dead


def clean_stale(out: Path) -> Cleaned:
    """Undo what killed jobs left next to `out`: when `out` is missing but a dead job's superseded
    bundle is there (killed between the fallback's two renames), rename it back; then delete every
    staging and superseded directory of dead jobs. Never raises: a directory that cannot be removed
    now is tried again at the next run."""
    out = out.resolve()
    cleaned = Cleaned()
    dead = _dead_siblings(out)
    olds = sorted((p for kind, p in dead if kind == "old"), key=_mtime, reverse=True)
    if olds and not os.path.lexists(out):
        with suppress(OSError):  # a concurrent run may have restored it first
            _rename_noreplace(olds[0], out)
            cleaned.restored = olds[0]
    for _, path in dead:
        if path == cleaned.restored:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            cleaned.removed.append(path)
    return cleaned


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def free_bytes(path: Path) -> int:
    """Free bytes (for this user) on the filesystem that will hold `path` (its nearest existing
    ancestor: missing parents are created only when the bundle is written)."""
    ancestor = path.resolve()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return shutil.disk_usage(ancestor).free


def _rename_noreplace(src: Path, dst: Path) -> None:
    if not _renameat2(src, dst, RENAME_NOREPLACE):
        # No atomic no-replace here: check, then rename (a directory that appears in between is
        # replaced only if it is empty; a non-empty one makes os.rename fail).
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)


def _fsync(path: Path, directory: bool) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name, directory=False)
        _fsync(Path(dirpath), directory=True)


def _replace(staged: Path, out: Path) -> Path:
    """Put `staged` at `out`, which exists; return where the old bundle now is (to delete)."""
    if _renameat2(staged, out, RENAME_EXCHANGE):
        return staged  # one atomic step: the old bundle now sits at the staging name
    old = out.with_name(f"{_prefix(out, 'old')}{secrets.token_hex(4)}")
    os.rename(out, old)
    try:
        os.rename(staged, out)  # a kill before this line leaves `old` for clean_stale to restore
    except OSError:
        os.rename(old, out)
        raise
    return old


def _install(staged: Path, out: Path, force: bool) -> None:
    staged.chmod(0o755)  # mkdtemp makes it 0700; the service may run as another user
    _sync_tree(staged)
    if force and os.path.lexists(out):
        superseded = _replace(staged, out)
        # From here on the new bundle is in place: nothing below may fail the publish.
        with suppress(OSError):
            _fsync(out.parent, directory=True)
        shutil.rmtree(superseded, ignore_errors=True)  # leftovers: removed by the next clean_stale
    else:
        _rename_noreplace(staged, out)
        with suppress(OSError):
            _fsync(out.parent, directory=True)


def _describe(out: Path, exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on the disk of {out.parent} or choose --out on another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {out.parent} writable for this user or choose another --out"
    elif exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
        fix = "it appeared while the job ran; pass --force to replace it or choose another --out"
    else:
        fix = f"check the disk of {out.parent} or choose another --out"
    state = f"the previous bundle at {out} is untouched" if os.path.lexists(out) else f"nothing was written at {out}"
    return f"cannot write the bundle at {out}: {exc.strerror or exc}{where}; {state}; {fix}"


@contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh staging directory next to `out`; when the block succeeds, put it at `out`
    (replacing an existing bundle only with `force`), atomically where the system allows. On any
    error the staging directory is deleted and `out` holds what it held; an OSError (disk full,
    permission denied, ...) becomes a one-line PublishError."""
    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=_prefix(out, "tmp"), dir=out.parent))
    except OSError as exc:
        raise PublishError(_describe(out, exc)) from exc
    try:
        yield staged
        _install(staged, out, force)
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError):
            raise PublishError(_describe(out, exc)) from exc
        raise
