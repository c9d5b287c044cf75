"""One writer per run directory: an operating-system lock on a file inside it.

    with RunLock(output_dir, command="dd-evals run"):    # a second writer is refused in one sentence
        ...                                             # (wait=True: it waits for the first instead)
    holder = RunLock.holder(output_dir)                 # readers: who is writing now (None: nobody)

The lock is `flock` on `<dir>/.dd-prompting.lock` (`msvcrt.locking` on Windows): the kernel releases
it when the holder's process ends, however it ends (`kill -9` included), so a dead run never leaves a
stale lock. The file also names its holder (pid, host, start, command) for the sentence a second
writer gets; the name is only read while the lock is held by someone, so a dead holder's leftover
note is never shown. Readers (reports, dry runs) never take the lock: they ask `holder()` to say the
directory is in use.

`filelock` (which the dependencies bring) was not used: its Unix lock truncates the file on every
attempt, which erases the holder's note, and it quietly switches to a soft lock where `flock` fails,
where this must say so.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLock", "RunLockHolder", "RunLockError", "RunDirectoryInUseError", "LOCK_FILE"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".dd-prompting.lock"
# A reader's probe holds a shared lock for an instant; a writer that meets one tries again for this long
# before it concludes that another writer holds the directory.
_PROBE_GRACE_SECONDS = 0.5


class RunLockError(RuntimeError):
    """The run directory can't be locked for writing: not a directory, or a filesystem without locks."""


class RunDirectoryInUseError(RunLockError):
    """Another process is writing the run directory."""


@dataclass(frozen=True)
class RunLockHolder:
    pid: int | None
    host: str
    started: str
    command: str

    def describe(self) -> str:
        who = f"pid {self.pid} on {self.host}" if self.pid else "another process"
        what = f"`{self.command}`, " if self.command else ""
        return f"{what}{who}, started {self.started}" if self.started else f"{what}{who}"


class RunLock:
    """The one-writer lock of a run directory: `acquire` (or `with`) refuses another writer, or waits for it.

    Args:
        directory: The run directory (created if missing).
        command: What the holder runs, for the sentence a second writer gets ("dd-evals run").
        wait: Wait for another writer to finish instead of refusing.
        on_wait: Called once with the holder before waiting (default: a warning that says who is waited for).
    """

    def __init__(self, directory: str | Path, *, command: str, wait: bool = False, on_wait=None):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.command = command
        self.wait = wait
        self.on_wait = on_wait or self._say_waiting
        self._fd: int | None = None
        self._created: list[Path] = []  # directories this lock made, removed again if nothing else was put there

    # -- writers -------------------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock, or raise `RunDirectoryInUseError` naming the holder (with `wait`, block until it is free)."""
        told = False  # the user hears once that we wait, however often the wait starts again
        while self._fd is None:
            fd = self._open()
            try:
                if not self._try_lock(fd, grace=_PROBE_GRACE_SECONDS):
                    holder = _read_holder(fd)
                    if not self.wait:
                        raise RunDirectoryInUseError(
                            f"{self.directory} is in use by {holder.describe()}: one process writes a run directory "
                            "at a time. Wait for it to finish (or pass --wait to wait for it), or use another "
                            "directory."
                        )
                    if not told:
                        self.on_wait(holder)
                        told = True
                    _lock(fd, blocking=True, path=self.path)
                if not _same_file(fd, self.path):  # the holder removed the directory it had made: start again
                    os.close(fd)
                    continue
                self._write_note(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self

    def release(self) -> None:
        """Clear the holder's note and let go of the lock (closing the file releases it).

        A directory this lock created, and that holds nothing but the lock file (a run refused before it
        wrote anything), is removed again: a failed start leaves no empty run directory behind.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if self._created and os.listdir(self.directory) == [LOCK_FILE]:
                os.unlink(self.path)  # while still locked: a waiter sees the file gone and starts again
                for directory in self._created:  # the deepest first
                    directory.rmdir()
        except OSError:
            pass  # something else was put there meanwhile: it stays
        finally:
            os.close(fd)

    def _open(self) -> int:
        missing, directory = [], self.directory
        while not directory.exists() and directory != directory.parent:
            missing.append(directory)
            directory = directory.parent
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: a holder's note stays readable
        except (FileExistsError, NotADirectoryError, PermissionError) as err:
            raise RunLockError(f"run directory {self.directory}: {err.strerror} ({err.filename}); output_dir and "
                               "--run-dir must name directories this user can write, not files") from err
        self._created = self._created or missing
        return fd

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _say_waiting(self, holder: RunLockHolder) -> None:
        logger.warning("%s is in use by %s; waiting for it to finish (--wait).", self.directory, holder.describe())

    def _try_lock(self, fd: int, *, grace: float) -> bool:
        deadline = time.monotonic() + grace
        while not _lock(fd, blocking=False, path=self.path):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # a reader's probe lasts microseconds; a writer's lock outlasts the grace
        return True

    def _write_note(self, fd: int) -> None:
        note = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(note) + "\n").encode("utf-8"), 0)

    # -- readers -------------------------------------------------------------------------------------
    @staticmethod
    def holder(directory: str | Path) -> RunLockHolder | None:
        """Who holds the directory's lock now, or None. Never blocks and never keeps a writer out for long."""
        path = Path(directory) / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY if sys.platform != "win32" else os.O_RDWR)
        except OSError:
            return None
        try:
            if not os.fstat(fd).st_size:  # released cleanly: no note, no probe
                return None
            try:
                if _lock(fd, blocking=False, shared=True, path=path):
                    return None  # the note is a dead holder's: the kernel released its lock
            except RunLockError:
                return None  # a filesystem without locks: nobody can hold one
            return _read_holder(fd)
        finally:
            os.close(fd)  # also drops the shared probe lock, if taken


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> RunLockHolder:
    try:
        note = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        note = {}
    if not isinstance(note, dict):
        note = {}
    pid = note.get("pid")
    return RunLockHolder(pid=pid if isinstance(pid, int) else None, host=str(note.get("host", "")),
                         started=str(note.get("started", "")), command=str(note.get("command", "")))


def _lock(fd: int, *, blocking: bool, shared: bool = False, path: Path) -> bool:
    """Lock `fd`; False if another process holds it (non-blocking). A filesystem that cannot lock is an error."""
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(fd, mode if blocking else mode | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise RunLockError(
                f"{path.parent}: its filesystem cannot lock files ({os.strerror(err.errno)}), so two runs on it could "
                "write over each other; use a run directory on a local disk."
            ) from err
        raise
