"""A run's files: the --save-dir's names, atomic writes, a kill's temporaries, a log's record. No torch."""

import contextlib
import hashlib
import os
import re

from plumbing.errors import InputError, cannot_write, say

CHECKPOINT_NAME = "checkpoint.pth"
LOCK_NAME = ".lock"
MODEL_NAMES = ("g.pth", "sup_f.pth", "unsup_f.pth")
TEMPORARY_MARK = ".tmp-main_mlp-"  # write_atomically's temporary: NAME + this + pid (docs/resume.md, 'Temporaries')
# Checkpoints of format 1 checked a log by the hash of the TAIL_BYTES before their offset only.
TAIL_BYTES = 4096


def is_save_dir_file(name):
    """Whether ``name`` is (or is a temporary of) a file a run keeps in its --save-dir."""
    return any(name == own or name.startswith(own + ".tmp") for own in (CHECKPOINT_NAME, LOCK_NAME) + MODEL_NAMES)


def temporary_name(path, pid):
    return f"{path}{TEMPORARY_MARK}{pid}"


def write_atomically(path, data, lock=None):
    """Write ``data`` to a temporary file renamed into place: ``path`` is the old file or the new, never a cut one.
    A symbolic link is kept (its target is replaced); ``lock`` (a locks.OutputLock) moves to the new file."""
    path = os.path.realpath(path)
    tmp, old_lock = temporary_name(path, os.getpid()), None
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        old_lock = lock.adopt(tmp) if lock is not None else None
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise cannot_write(path, exc) from None
    finally:
        if old_lock is not None:
            os.close(old_lock)


def _gone(pid):
    """Whether no process ``pid`` exists now, or it is this one (which writes none at start-up)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process can have that number
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return pid == os.getpid()


def remove_temporaries(directory, names=None):
    """Remove the temporaries of ``directory/NAME`` a killed run left (``names`` None: a --save-dir's files, also
    as NAME.tmp<pid>, as earlier versions named them); one that may not be removed (another user's) is said."""
    marks = re.escape(TEMPORARY_MARK) + (r"|\.tmp" if names is None else "")
    names = (CHECKPOINT_NAME, *MODEL_NAMES) if names is None else names
    pattern = re.compile(f"(?:{'|'.join(map(re.escape, names))})(?:{marks})(\\d+)")
    for other in os.listdir(directory):
        found = pattern.fullmatch(other)
        if found and _gone(int(found.group(1))):
            try:
                os.remove(os.path.join(directory, other))
            except FileNotFoundError:
                pass
            except OSError as exc:
                say(f"left {os.path.join(directory, other)}, a temporary of an earlier run: cannot "
                    f"remove it ({exc.strerror or exc})")


def remove_previous_run(save_dir):
    """Remove the checkpoint and models of the run a fresh --overwrite run replaces (before it writes its g)."""
    for name in (CHECKPOINT_NAME,) + MODEL_NAMES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(save_dir, name))


def file_check(path, offset, digest):
    """A checkpoint's record of a log file: its path, the offset, the SHA-256 (``digest``) of the bytes before it."""
    if path is None:
        return None
    if not os.path.isfile(path):  # /dev/null, a terminal, a pipe: nothing to cut back or to verify
        return {"path": os.path.abspath(path), "offset": offset, "stream": True}
    return {"path": os.path.abspath(path), "offset": offset, "sha256": digest.hexdigest()}


def _holds(path, check):
    with open(path, "rb") as handle:
        prefix = handle.read(check["offset"])
    if len(prefix) < check["offset"]:
        return False
    if "sha256" in check:
        return hashlib.sha256(prefix).hexdigest() == check["sha256"]
    return hashlib.sha256(prefix[-TAIL_BYTES:]).hexdigest() == check.get("tail_sha256")  # format 1


def verify_file(flag, path, check):
    """The check ``path`` holds (of the alternatives, when a list: while an extension restates it), else InputError."""
    alternatives = check if isinstance(check, list) else [check]
    first = alternatives[0]
    if first is None:
        if path is not None:
            raise InputError(f"argument {flag}: the checkpoint's run wrote no {flag}, so {path} would "
                             f"start mid-run; resume without {flag}")
        return None
    if path is None:
        raise InputError(f"argument {flag}: the checkpoint's run wrote {first['path']}; pass {flag} again to "
                         f"continue it")
    if first.get("stream"):
        if os.path.exists(path) and not os.path.isfile(path):
            return first  # a stream again (e.g. /dev/null): written to, never cut
        raise InputError(f"argument {flag}: the checkpoint's run wrote to the stream {first['path']}, "
                         f"not a file; give a stream again")
    if not os.path.isfile(path):
        raise InputError(f"argument {flag}: {path} is missing; the checkpoint continues it after byte "
                         f"{first['offset']}")
    found = next((candidate for candidate in alternatives if _holds(path, candidate)), None)
    if found is None:
        raise InputError(f"argument {flag}: {path} does not hold what the checkpoint's run wrote "
                         f"({os.path.getsize(path)} bytes; the checkpoint continues {first['path']} after byte "
                         f"{first['offset']}); give that file, or start over with --overwrite")
    return found
