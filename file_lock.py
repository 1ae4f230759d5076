"""The one way the project takes a lock: an exclusive flock, without waiting. The lock belongs to the
open file: closing it lets go, however the process ends."""

import fcntl


def try_lock(handle):
    """Take an exclusive flock on ``handle`` (a file object or a descriptor) if nobody holds one; False
    when another open file holds it (or the file system refuses locks)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
