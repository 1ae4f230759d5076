"""The run's exclusive flocks, never waited for, on its --save-dir and output files (the OS lets go at any exit)."""

import contextlib
import errno
import fcntl
import os
import stat

from plumbing.errors import InputError, cannot_write
from plumbing.files import LOCK_NAME, remove_temporaries


def try_lock(handle):
    """Lock ``handle`` (a file or a descriptor); False when another open file holds it (or locks are refused)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


class _Lock:
    fd = None

    def _take(self, flag, path, what, flags):
        """Open and lock ``path`` (False: another run holds it); no room to create it is a write failure."""
        try:
            self.fd = os.open(path, flags | os.O_NONBLOCK, 0o666)  # a FIFO must not block the open
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise cannot_write(path, exc) from None
            raise InputError(f"argument {flag}: cannot open {what} ({exc.strerror or type(exc).__name__})") from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):  # a FIFO, a device: no lock to take, nothing to write
            self.release()
            raise InputError(f"argument {flag}: {what} is not a regular file")
        return try_lock(self.fd)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class SaveDirLock(_Lock):
    """The lock of ``DIR/.lock``, which holds the holder's pid: one run at a time in a --save-dir."""

    def __init__(self, save_dir):
        self.path = os.path.join(save_dir, LOCK_NAME)
        if not self._take("--save-dir", self.path, f"its lock file {self.path}", os.O_RDWR | os.O_CREAT):
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            self.release()
            raise InputError(f"argument --save-dir: {save_dir} is in use by another run (pid {holder}); "
                             f"wait for it or use another directory")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.release()
            raise cannot_write(self.path, exc) from None


class OutputLock(_Lock):
    """The lock of a --log-file or --metrics-file: a second run writing it is refused before it touches it.
    Streams (/dev/null, a pipe) are not locked."""

    def __init__(self, flag, path, create):
        self.path, self.created = path, None  # created: the stat of the file this lock made
        if path is None or not (os.path.isfile(path) or create and not os.path.exists(path)):
            return
        for _ in range(3):  # the file may be replaced (restated by its holder) while we lock it
            new = create and not os.path.lexists(path)  # O_EXCL: made here, so ours to take back
            flags = os.O_RDONLY | (os.O_CREAT if create else 0) | (os.O_EXCL if new else 0)
            if not self._take(flag, path, path, flags):
                self.release()
                raise InputError(f"argument {flag}: {path} is being written by another run; wait for it "
                                 f"or give another file")
            if os.path.exists(path) and os.path.samestat(os.fstat(self.fd), os.stat(path)):
                self.created = os.stat(path) if new else None
                break
            self.release()
        directory, name = os.path.split(os.path.realpath(path))
        remove_temporaries(directory, (name,))

    def adopt(self, path):
        """Lock ``path`` (the file about to replace ours) as well; returns the old lock's descriptor, which
        ``write_atomically`` closes once ``path`` is in place: the name is never unlocked."""
        if self.fd is None:
            return None
        fd = os.open(path, os.O_RDONLY)
        try_lock(fd)  # a fresh temporary: nobody else holds it
        old, self.fd = self.fd, fd
        return old

    def discard(self):
        """Remove the file this lock made while it is still empty and that file: a refused start leaves none."""
        with contextlib.suppress(OSError):
            if self.created and os.path.samestat(self.created, os.stat(self.path)) and not os.path.getsize(self.path):
                os.remove(self.path)


@contextlib.contextmanager
def run_locks(args):
    """The locks of a run's --save-dir and output files, held from start-up to exit; gives the output files' (for
    ``write_atomically``). Left by an exception (a refusal), it first removes the output files it made still empty."""
    with contextlib.ExitStack() as stack:
        outputs = []
        try:
            if args.save_dir:
                stack.callback(SaveDirLock(args.save_dir).release)
            for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
                outputs.append(OutputLock(flag, path, create=not args.resume_training))
                stack.callback(outputs[-1].release)
            yield outputs
        except BaseException:
            for lock in outputs:
                lock.discard()
            raise
