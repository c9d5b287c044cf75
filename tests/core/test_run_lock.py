"""One writer per run directory: the OS lock, its holder's note, waiting, a dead holder, readers, no-lock filesystems."""

import errno
import os
import signal
import subprocess
import sys
import threading

import pytest

from dd_prompting.run_lock import LOCK_FILE, RunDirectoryInUseError, RunLock, RunLockError

HOLD = "import sys; from dd_prompting.run_lock import RunLock; RunLock(sys.argv[1], command='holder').acquire(); " \
       "print('held', flush=True); sys.stdin.read()"


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path, command="dd-evals run"):
        holder = RunLock.holder(tmp_path)
        assert holder is not None and holder.pid == os.getpid() and holder.command == "dd-evals run"
        with pytest.raises(RunDirectoryInUseError) as refused:
            RunLock(tmp_path, command="dd-evals run").acquire()
    message = str(refused.value)
    assert message.startswith(f"{tmp_path} is in use by `dd-evals run`, pid {os.getpid()} on ")
    assert "\n" not in message and "--wait" in message
    assert RunLock.holder(tmp_path) is None  # released: readers see nobody
    RunLock(tmp_path, command="again").acquire().release()


def test_wait_takes_the_lock_when_the_holder_lets_go(tmp_path):
    first = RunLock(tmp_path, command="first").acquire()
    told = []

    def release_when_told(holder):  # called once the second writer starts waiting
        told.append(holder)
        threading.Timer(0.0, first.release).start()

    second = RunLock(tmp_path, command="second", wait=True, on_wait=release_when_told).acquire()
    assert [holder.command for holder in told] == ["first"]
    assert RunLock.holder(tmp_path).command == "second"
    second.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        assert RunLock.holder(tmp_path).pid == process.pid
        with pytest.raises(RunDirectoryInUseError, match=f"pid {process.pid}"):
            RunLock(tmp_path, command="second").acquire()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert (tmp_path / LOCK_FILE).read_text()  # the dead holder's note is still in the file...
    assert RunLock.holder(tmp_path) is None  # ...but its lock went with it
    with RunLock(tmp_path, command="next"):
        assert RunLock.holder(tmp_path).command == "next"


def test_a_filesystem_without_locks_is_one_clear_sentence(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunLockError, match=f"^{tmp_path}: its filesystem cannot lock files") as refused:
        RunLock(tmp_path, command="x").acquire()
    assert not isinstance(refused.value, RunDirectoryInUseError)
    assert RunLock.holder(tmp_path) is None  # a reader is never stopped by it


def test_a_file_in_place_of_the_directory_is_one_sentence(tmp_path):
    (tmp_path / "runs").write_text("a file")
    with pytest.raises(RunLockError, match="must name directories"):
        RunLock(tmp_path / "runs" / "x", command="x").acquire()


def test_a_directory_the_lock_made_and_nothing_else_used_is_removed_again(tmp_path):
    with RunLock(tmp_path / "runs" / "new", command="refused before any work"):
        assert (tmp_path / "runs" / "new" / LOCK_FILE).is_file()
    assert not (tmp_path / "runs").exists()  # a failed start leaves no empty run directory behind
    with RunLock(tmp_path / "runs" / "new", command="did some work"):
        (tmp_path / "runs" / "new" / "results.jsonl").write_text("{}\n")
    assert (tmp_path / "runs" / "new" / "results.jsonl").is_file()


def test_a_waiter_whose_directory_was_removed_meanwhile_locks_the_new_one(tmp_path):
    directory = tmp_path / "new"
    first = RunLock(directory, command="first").acquire()

    def release_when_told(holder):
        threading.Timer(0.0, first.release).start()  # removes the directory it made: nothing else is in it

    second = RunLock(directory, command="second", wait=True, on_wait=release_when_told).acquire()
    assert RunLock.holder(directory).command == "second"  # on the lock file that is there now
    with pytest.raises(RunDirectoryInUseError):
        RunLock(directory, command="third").acquire()
    second.release()
