"""Publishing a bundle: the path a user names always holds a complete bundle, old or new.

The job writes into a staging directory next to `out` and, once the bundle reads back, puts it in
place. With `--force` the old bundle is replaced; the question is how to do that without an instant
where `out` holds nothing (two renames: out -> old, staged -> out) or half of each.

Design: on Linux, `renameat2(staged, out, RENAME_EXCHANGE)` swaps the two directory entries in one
atomic step (Linux >= 3.15; ext4, xfs, btrfs, tmpfs, overlayfs and others support it). `out` stays
a plain directory, as in every earlier release, so nothing that reads it changes: the service opens
it by path (`serve.bundle.load`, POST /admin/reload), and a plain directory from an older release
is replaced in the same single step. The superseded bundle, now at the staged name, is deleted at
once; a service that loaded it keeps serving, since `bundle.files.open_bundle` read the model and
the arrays into memory when it verified them: nothing it serves is read from the deleted files.

Not chosen: versioned directories behind an atomically swapped symlink (the first `--force` onto a
plain directory cannot become a symlink atomically anyway, tools that copy or mount `out` treat a
symlink differently, and old versions would need a retention policy).

Where RENAME_EXCHANGE is unavailable (not Linux, a libc without renameat2, or a filesystem that
answers EINVAL, e.g. NFS and some FUSE filesystems), the two-rename path is used: out -> the job's
folder, staged -> out. A process killed between those two renames leaves nothing at `out` for that
instant; `clean_stale` (run by the job before it starts any work) renames the orphaned old bundle
back, so the next run finds the path as it was.

Ownership is a lock, not a pid. Each job works in one folder, `.NAME.publish-PID-RANDOM/`: `lock`
(an empty file), `new/` (the staged bundle) and, on the two-rename path, `old/` (the bundle that
was at `out`; it moves into the locked folder, the lock file never moves). The job holds an
exclusive `flock` on `lock` from before `new/` exists until the folder is gone, and the kernel drops
it when the process dies, however it dies. `clean_stale` takes the lock without waiting; only if it
gets it is the folder abandoned, and it restores `old/` (when `out` is missing) and deletes the
folder while holding it. A pid cannot say this: in a container every job is PID 1, a restarted
container keeps its hostname, and containers with one hostname may have separate pid namespaces,
whereas a lock on a file of the shared filesystem is one object for all. The pid stays in the name
only to tell people which process made it (`flock -n DIR/lock true` succeeds iff it is abandoned).
flock locks belong to the open file, not the process (unlike fcntl/lockf locks), so a `clean_stale`
in a live job's own process is refused the lock as well.

On NFS the Linux client emulates flock with a whole-file byte-range lock held by the server (hence
`lock` is opened for writing): clients see each other's locks when the mount has locking (NFSv4,
or v3 with lockd), and a client that dies loses them when the server's lease ends (NFSv4: ~90 s),
so a dead job's folder is cleaned late, never early. With `nolock` or `local_lock=flock|all` locks
are local to one client: never run jobs on two machines against one `--out` there. Where locks are
refused (ENOLCK) the publish fails with a PublishError and `clean_stale` keeps the folder.

Earlier releases took no lock, so their folders are judged as they judged them: `.NAME.tmp-HOST-PID-*`
and `.NAME.old-HOST-PID-*` (HOST: 8 hex digits of the host name's sha256), and `.NAME.old-PID`, are
removed when HOST is this host's (or absent) and PID is dead. Their superseded bundle (`old`) is
renamed back whenever `out` is missing, whatever its name says: an owner still alive is between its
two renames, and a complete bundle at `out` is what both releases want. Those named after a live
pid (PID 1 in containers) are left for people to delete once no earlier job runs, as are the
older staging folders without an owner (`.NAME.tmp-XXXXXXXX`).

Every file is fsynced before the swap and the parent directory after it, so a power cut also
leaves the old or the new bundle, not a new directory of empty files. Any OSError while staging or
swapping (disk full, permission denied, ...) is raised as `PublishError` with one line that says
what failed and that the previous bundle is untouched; the job's folder is removed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

LOCK, NEW, OLD = "lock", "new", "old"  # the entries of a job's folder
_CLAIM_TRIES = 5


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


class _Lock:
    """An open lock file whose exclusive flock this process holds; `release` is idempotent, so an
    ExitStack may release what was already released."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def _lock(path: Path, wait: bool) -> _Lock | None:
    """Take the exclusive flock of the existing file `path`: a _Lock, or None when another open
    file holds it. None, too, when `path` was unlinked or replaced before the lock came: a cleaner
    removes a folder while holding its lock, so that lock protects nothing any more. Raises
    FileNotFoundError when there is no such file, and any other OSError (ENOLCK: a filesystem
    without locks) as it comes."""
    held = _Lock(os.open(path, os.O_RDWR | os.O_CLOEXEC))  # on NFS an exclusive lock needs write access
    try:
        fcntl.flock(held.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        if os.path.samestat(os.fstat(held.fd), os.stat(path)):
            return held
    except (BlockingIOError, FileNotFoundError):
        pass
    except BaseException:
        held.release()
        raise
    held.release()
    return None


def _claim(out: Path) -> tuple[Path, _Lock]:
    """Make this job's folder next to `out` and hold its lock. A cleaner may take the folder between
    the mkdir and the lock (it looks abandoned then); then make another."""
    for _ in range(_CLAIM_TRIES):
        job = Path(tempfile.mkdtemp(prefix=f".{out.name}.publish-{os.getpid()}-", dir=out.parent))
        try:
            os.close(os.open(job / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            held = _lock(job / LOCK, wait=True)
        except FileNotFoundError:  # a cleaner removed the folder or its lock file: it is gone
            continue
        except OSError:
            with suppress(OSError):
                os.unlink(job / LOCK)
            with suppress(OSError):
                os.rmdir(job)
            raise
        if held is not None:
            return job, held
        with suppress(OSError):  # unless the cleaner that took it has removed it already
            os.rmdir(job)
    raise OSError(errno.EAGAIN, f"no staging folder could be locked in {_CLAIM_TRIES} tries", str(out.parent))


def _remove_job(job: Path, out: Path, held: _Lock) -> bool:
    """Delete the job folder whose lock `held` is, and release it. Kept whole while its `old/` is the
    only copy of the bundle (`out` missing): the next `clean_stale` renames it back. True: gone."""
    try:
        if os.path.lexists(job / OLD) and not os.path.lexists(out):
            return False
        for entry in (NEW, OLD):
            shutil.rmtree(job / entry, ignore_errors=True)
        if os.path.lexists(job / NEW) or os.path.lexists(job / OLD):
            return False  # the lock file stays, so the next run finds the folder and tries again
        # Unlinked while still held: a job whose fresh folder a cleaner took before the job's own
        # flock then finds, once it gets the lock, that the file is gone, and makes another folder.
        # (NFS keeps it as .nfsXXXX until the close, so the rmdir may fail: the next run removes it.)
        with suppress(OSError):
            os.unlink(job / LOCK)
    finally:
        held.release()
    with suppress(OSError):
        os.rmdir(job)
    return not os.path.lexists(job)


def _legacy_host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):  # another user's process, or not a pid: keep it
        pass
    return False


@dataclass
class Cleaned:
    """What `clean_stale` did: the leftover folder whose superseded bundle it renamed back to `out`,
    if any (a killed job's folder, or an earlier release's `.NAME.old-*`), and the folders of dead
    jobs it removed."""

    restored: Path | None = None
    removed: list[Path] = field(default_factory=list)


@dataclass
class _Leftovers:
    """`out`'s siblings that no live job owns: locked job folders (their locks held by the caller),
    empty job folders without a lock file, and earlier releases' folders."""

    jobs: list[tuple[Path, _Lock]] = field(default_factory=list)
    bare: list[Path] = field(default_factory=list)
    legacy_old: list[Path] = field(default_factory=list)  # may be restored whatever their owner
    legacy_dead: list[Path] = field(default_factory=list)  # owner dead on this host: may be removed


def _leftovers(out: Path, stack: ExitStack) -> _Leftovers:
    name = re.escape(out.name)
    job_name = re.compile(rf"^\.{name}\.publish-\d+-\w+$")
    # An earlier release's staging/superseded folder (`.NAME.tmp|old-HOST-PID-RANDOM`), or the
    # superseded bundle of the releases before it (`.NAME.old-PID`, always written on this host).
    legacy_name = re.compile(rf"^\.{name}\.(?:(tmp|old)-([0-9a-f]{{8}})-(\d+)-\w+|old-(\d+))$")
    found, here = _Leftovers(), _legacy_host_tag()
    try:
        siblings = [p for p in out.parent.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:  # no parent yet, or unreadable: nothing of ours can be there
        siblings = []
    for path in siblings:
        if job_name.match(path.name):
            try:
                held = _lock(path / LOCK, wait=False)
            except FileNotFoundError:  # just made by a job that has no lock file yet, or emptied
                found.bare.append(path)
            except OSError:  # unreadable (another user's job): its owner is unknown, keep it
                continue
            else:
                if held is not None:
                    stack.callback(held.release)
                    found.jobs.append((path, held))
        elif match := legacy_name.match(path.name):
            kind, host, pid, old_pid = match.groups()
            if kind != "tmp":
                found.legacy_old.append(path)
            if (host is None or host == here) and _dead(int(pid or old_pid)):
                found.legacy_dead.append(path)
    return found


def clean_stale(out: Path) -> Cleaned:
    """Undo what killed jobs left next to `out`: when `out` is missing but a dead job's superseded
    bundle is there (killed between the fallback's two renames), rename it back; then delete the
    folders of dead jobs. A folder is a dead job's when its lock is free (or, from an earlier
    release, as the module docstring says). Never raises: a folder that cannot be removed now is
    tried again at the next run."""
    out = out.resolve()
    cleaned = Cleaned()
    with ExitStack() as stack:  # the locks of abandoned folders, held until they are gone
        found = _leftovers(out, stack)
        if not os.path.lexists(out):
            cleaned.restored = _restore(out, [(job / OLD, job) for job, _ in found.jobs]
                                        + [(path, path) for path in found.legacy_old])
        for job, held in found.jobs:
            if _remove_job(job, out, held):
                cleaned.removed.append(job)
        for path in found.bare:
            with suppress(OSError):  # not empty: its job has made its lock file since
                os.rmdir(path)
                cleaned.removed.append(path)
        for path in found.legacy_dead:
            if path != cleaned.restored and os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.lexists(path):
                    cleaned.removed.append(path)
    return cleaned


def _restore(out: Path, candidates: list[tuple[Path, Path]]) -> Path | None:
    """Rename the newest superseded bundle among (bundle, folder it was found in) back to `out`;
    return that folder."""
    present = [(bundle, where) for bundle, where in candidates if bundle.is_dir()]
    for bundle, where in sorted(present, key=lambda c: _mtime(c[0]), reverse=True)[:1]:
        with suppress(OSError):  # a concurrent run may have restored it first
            _rename_noreplace(bundle, out)
            return where
    return None


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


def _replace(job: Path, out: Path) -> None:
    """Put the job's `new/` at `out`, which exists; the old bundle ends up in the job's folder."""
    staged, old = job / NEW, job / OLD
    if _renameat2(staged, out, RENAME_EXCHANGE):
        return  # one atomic step: the old bundle now sits at the job's new/
    os.rename(out, old)
    try:
        os.rename(staged, out)  # a kill before this line leaves `old` for clean_stale to restore
    except OSError:
        os.rename(old, out)
        raise


def _install(job: Path, out: Path, force: bool) -> None:
    staged = job / NEW
    staged.chmod(0o755)  # the service may run as another user, under another umask
    _sync_tree(staged)
    if force and os.path.lexists(out):
        _replace(job, out)
    else:
        _rename_noreplace(staged, out)
    # From here on the new bundle is in place: nothing below may fail the publish. The superseded
    # bundle is deleted with the job's folder.
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
    """Yield a fresh staging directory (`new/` in this job's locked folder next to `out`); when the
    block succeeds, put it at `out` (replacing an existing bundle only with `force`), atomically
    where the system allows. On any error the job's folder is deleted and `out` holds what it held;
    an OSError (disk full, permission denied, ...) becomes a one-line PublishError."""
    out = out.resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        job, held = _claim(out)
    except OSError as exc:
        raise PublishError(_describe(out, exc)) from exc
    try:
        (job / NEW).mkdir()
        yield job / NEW
        _install(job, out, force)
    except BaseException as exc:
        if isinstance(exc, OSError):
            raise PublishError(_describe(out, exc)) from exc
        raise
    finally:
        _remove_job(job, out, held)  # leftovers (and a lock that is gone with this process): clean_stale
