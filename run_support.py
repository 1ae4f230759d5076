"""The plumbing of a run, apart from the experiment: output files, locks, signals, checkpoints, errors.

Checkpoints are written atomically (a temporary file, then a rename); on resume the checkpoint must be of the
same configuration and the log files must still hold what it says they held, or nothing is touched (docs/resume.md).
"""

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import math
import os
import re
import reprlib
import signal
import stat
import sys
import time

import torch

import disentanglement_utils
import settings
import startup_signals
from argparse_utils import EXIT_BAD_INPUT, write_stdout
from file_lock import try_lock

CHECKPOINT_NAME, LOCK_NAME, MODEL_NAMES = settings.CHECKPOINT_NAME, settings.LOCK_NAME, settings.MODEL_NAMES
# Arguments that may differ between a run and its resumption: the incidental ones, and the length
# (an extension). The device is compared as its type instead (auto and cpu are the same device).
RESUMABLE_DIFFERENCES = settings.INCIDENTAL_FLAGS + ("n_steps", "more_unsupervised")
# Checkpoints carry their format. 2: the log and metrics files are checked by the hash of everything
# before the checkpoint's offset; 1 (no "format" key): by the hash of the TAIL_BYTES before it.
CHECKPOINT_FORMAT = 2
TAIL_BYTES = 4096
# What a checkpoint holds (besides "format"); one that lacks any is of an older layout, refused whole.
CHECKPOINT_KEYS = ("config", "seed", "phase", "step", "g", "encoder", "loss_fn", "optimizer", "loss_buffer",
                   "rng_cpu", "rng_data", "offsets", "file_checks", "last_logged")
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 74  # sysexits' EX_IOERR: a file could not be written (full disk, quota, size limit)
# SIGHUP (a closed terminal or ssh session) and SIGUSR2 (what SLURM sends before a
# time limit or preemption, and submitit passes on) are treated like SIGTERM.
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGUSR2: 140}
# Resumable arguments that change what the run is (its length, its final evaluation): a resumed
# run's files are updated to say their new values. The others (paths, --resume-training) stay as written.
RESTATED_ON_RESUME = ("n_steps", "more_unsupervised", "num_eval_batches", "checkpoint_every")
# The flags that decide a phase's length (main_mlp.phase_steps), named when a resume would change it.
LENGTH_FLAGS = {"supervised": "--n-steps", "unsupervised": "--n-steps/--more-unsupervised"}
# The temporary file of ``write_atomically`` for NAME is NAME + TEMPORARY_MARK + the writer's pid: a
# name no one else gives a file, so that the clean-up beside a log (a user's directory) removes only ours.
TEMPORARY_MARK = ".tmp-main_mlp-"


class InputError(ValueError):
    """A configuration that parses but cannot run (reported like a bad flag, exit 2)."""


class Diverged(RuntimeError):
    pass


class WriteError(OSError):
    """An output file (log, metrics, checkpoint, model, lock) could not be written."""


class Stop(Exception):
    def __init__(self, signum, where="a completed step"):
        super().__init__(signum)
        self.signum, self.where = signum, where


def exit_on_signals(prog):
    """Until the run has something to save, a signal ends it at once (no traceback)."""
    startup_signals.exit_at_once(f"{prog}: stopped by {{name}} during start-up; nothing of the run to save yet")


# From here on a signal is noted (``.signum`` of the returned flag), so the loop finishes its step.
remember_signals = startup_signals.remember


def _cannot_write(path, exc):
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def file_check(path, offset, digest):
    """A checkpoint's record of a log file: its path, the offset, the SHA-256 (``digest``) of the bytes before it."""
    if path is None:
        return None
    if not os.path.isfile(path):  # /dev/null, a terminal, a pipe: nothing to cut back or to verify
        return {"path": os.path.abspath(path), "offset": offset, "stream": True}
    return {"path": os.path.abspath(path), "offset": offset, "sha256": digest.hexdigest()}


def _holds(path, check):
    """Whether the regular file ``path`` begins with what ``check`` describes."""
    if os.path.getsize(path) < check["offset"]:
        return False
    with open(path, "rb") as handle:
        prefix = handle.read(check["offset"])
    if "sha256" in check:
        return hashlib.sha256(prefix).hexdigest() == check["sha256"]
    # Checkpoints of format 1 kept the hash of the last TAIL_BYTES before the offset only.
    return hashlib.sha256(prefix[-TAIL_BYTES:]).hexdigest() == check.get("tail_sha256")


def verify_file(flag, path, check):
    """The check (``check``, or one of its alternatives when it is a list: an extended run's while its
    files are being restated) that ``path`` holds now; InputError unless it holds what the checkpoint's
    run wrote. The content decides, not the name: a run directory copied or moved elsewhere resumes."""
    alternatives = check if isinstance(check, list) else [check]
    first = alternatives[0]
    if first is None:
        if path is not None:
            raise InputError(f"argument {flag}: the checkpoint's run wrote no {flag}, so {path} would "
                             f"start mid-run; resume without {flag}")
        return None
    if path is None:
        raise InputError(f"argument {flag}: the checkpoint's run wrote {first['path']}; pass {flag} "
                         f"again to continue it")
    if first.get("stream"):
        if os.path.exists(path) and not os.path.isfile(path):
            return first  # a stream again (e.g. /dev/null): written to, never cut
        raise InputError(f"argument {flag}: the checkpoint's run wrote to the stream {first['path']}, "
                         f"not a file; give a stream again")
    if not os.path.isfile(path):
        raise InputError(f"argument {flag}: {path} is missing; the checkpoint continues it after byte "
                         f"{first['offset']}")
    for candidate in alternatives:
        if _holds(path, candidate):
            return candidate
    raise InputError(f"argument {flag}: {path} does not hold what the checkpoint's run wrote "
                     f"({os.path.getsize(path)} bytes; the checkpoint continues {first['path']} after byte "
                     f"{first['offset']}); give that file, or start over with --overwrite")


def restated_prefix(path, offset, args, metrics=False):
    """The first ``offset`` bytes of a log (or metrics file) with the RESTATED_ON_RESUME arguments given
    their values in ``args`` (an extended run says its new length); None when nothing changes."""
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        lines = handle.read(offset).decode("utf-8").splitlines(keepends=True)
    values = {key: getattr(args, key) for key in RESTATED_ON_RESUME}
    changed = list(lines)
    if metrics and changed:
        record = json.loads(changed[0])
        if record.get("type") == "config":
            record["args"].update(values)
            changed[0] = json.dumps(record) + "\n"
    elif changed and changed[0] == "Arguments:\n":
        for k in range(1, len(changed)):
            if not changed[k].startswith("\t"):
                break
            key = changed[k][1:].split(":", 1)[0]
            if key in values:
                changed[k] = f"\t{key}: {values[key]}\n"  # None as the block prints it: "None"
    return None if changed == lines else "".join(changed).encode("utf-8")


def continue_files(prog, args, state, checkpoint_path, locks):
    """The RunLog of a resumed run: its files cut back to the checkpoint, their arguments restated. Every
    moment stays resumable: the checkpoint first accepts the restated files as well as the present ones
    (``state["file_checks"]``: those they matched), then each file is replaced atomically."""
    paths = (args.log_file, args.metrics_file)
    checks = list(state["file_checks"])
    new = [restated_prefix(path, check["offset"], args, metrics=k == 1) if check else None
           for k, (path, check) in enumerate(zip(paths, checks))]
    offsets = tuple(0 if check is None else check["offset"] if data is None else len(data)
                    for check, data in zip(checks, new))
    if any(data is not None for data in new):
        state["file_checks"] = tuple(
            check if data is None else [check, file_check(path, len(data), hashlib.sha256(data))]
            for path, check, data in zip(paths, checks, new))
        state["offsets"] = offsets
        save_checkpoint_file(state, checkpoint_path)
        for path, data, lock in zip(paths, new, locks):
            if data is not None:
                write_atomically(path, data, lock)
    return RunLog(prog, args.log_file, args.metrics_file, offsets)


class RunLog:
    """stdout (and --log-file), stderr, and the --metrics-file JSON lines of one run. Each file keeps a running
    SHA-256 of its content for the checkpoints. ``truncate_at``: (log offset, metrics offset) of a resume."""

    def __init__(self, prog, log_file=None, metrics_file=None, truncate_at=None):
        self.prog = prog
        self.to_file = truncate_at is None  # on resume, the header goes to stdout only
        self.paths = (log_file, metrics_file)
        self.stdout_gone = False
        self.failed = False  # a write failed (and was reported): closing may fail the same way again
        # (log, metrics): the binary handles (None without the file) and the running hashes of their content
        self.handles, self.hashes = zip(*(self._open(path, offset)
                                          for path, offset in zip(self.paths, truncate_at or (None, None))))

    @staticmethod
    def _open(path, offset):
        if path is None:
            return None, None
        if offset is None or not os.path.isfile(path):  # a fresh run, or a stream (e.g. /dev/null) to append to
            return open(path, "wb" if offset is None else "ab"), hashlib.sha256()
        handle = open(path, "r+b")
        prefix = handle.read(offset)
        if len(prefix) < offset:  # verified on resume; shorter now only if something else cut it
            handle.close()
            raise WriteError(f"cannot continue {path}: it is shorter than the checkpoint's {offset} bytes")
        handle.truncate(offset)
        handle.seek(offset)
        return handle, hashlib.sha256(prefix)

    def line(self, text):
        # A closed stdout (`main_mlp.py ... | head`) does not stop the run: it goes on writing its files.
        if not self.stdout_gone and not write_stdout(text + "\n"):
            self.stdout_gone = True
            self.info(f"{self.prog}: stdout was closed; the run goes on and writes only its files")
        self._write(0, text + "\n")

    @staticmethod
    def info(text):
        with contextlib.suppress(OSError):  # a closed stderr must not stop the run
            print(text, file=sys.stderr, flush=True)

    def record(self, **fields):
        if self.handles[1] is not None:  # no --metrics-file: nothing to serialise
            self._write(1, json.dumps(fields) + "\n")

    def _write(self, k, text):
        if self.handles[k] is None or not self.to_file:
            return
        data = text.encode("utf-8")
        try:
            self.handles[k].write(data)
            self.handles[k].flush()
        except OSError as exc:
            self.failed = True
            raise _cannot_write(self.paths[k], exc) from None
        self.hashes[k].update(data)

    def offsets(self):
        return tuple(handle.tell() if handle else 0 for handle in self.handles)

    def checks(self):
        """(log check, metrics check) for a checkpoint: see ``file_check``."""
        return tuple(map(file_check, self.paths, self.offsets(), self.hashes))

    def close(self):
        """Close both files. A failure a write reported already (closing flushes its leftover again) is not
        raised twice; one no write reported (a deferred write error) raises WriteError."""
        error = None
        for handle, path in zip(self.handles, self.paths):
            if handle is None:
                continue
            try:
                handle.close()  # closes the descriptor even when its flush fails
            except OSError as exc:
                error = error or _cannot_write(path, exc)
        if error is not None and not self.failed:
            self.failed = True
            raise error


def available_memory(device):
    """Bytes the run may still allocate on ``device``, or None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # (free, total)
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def refuse_if_too_big(need, device):
    """InputError when a run's estimated peak memory exceeds what ``device`` has available."""
    have = available_memory(device)
    if have is not None and need > have:
        raise InputError(f"arguments --n/--batch-size: this run needs about {need / 2**30:.1f} GiB at its "
                         f"peak, the {device.type} has {have / 2**30:.1f} GiB available; lower --batch-size "
                         f"or --n")


class _Lock:
    """An exclusive flock held for the run's lifetime on the descriptor ``fd``; closing it lets go."""

    fd = None

    def _take(self, flag, path, what, flags):
        """Open ``path`` and try to flock it (False: another run holds it). No room to create the file is a
        write failure (exit 74), anything else refuses ``flag``."""
        try:
            self.fd = os.open(path, flags | os.O_NONBLOCK, 0o666)  # a FIFO must not block the open
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _cannot_write(path, exc) from None
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
            raise _cannot_write(self.path, exc) from None


class OutputLock(_Lock):
    """The lock of an output file (--log-file, --metrics-file): a second run writing the same file is
    refused before it touches it. Streams (/dev/null, a pipe) are not locked."""

    def __init__(self, flag, path, create):
        self.path, self.created = path, None  # created: (device, inode) of the file this lock made
        if path is None or not (os.path.isfile(path) or create and not os.path.exists(path)):
            return
        for _ in range(3):  # the file may be replaced (restated by its holder) while we lock it
            new = create and not os.path.lexists(path)  # O_EXCL: made here, so ours to take back
            flags = os.O_RDONLY | (os.O_CREAT if create else 0) | (os.O_EXCL if new else 0)
            if not self._take(flag, path, path, flags):
                self.release()
                raise InputError(f"argument {flag}: {path} is being written by another run; wait for it "
                                 f"or give another file")
            if os.path.exists(path) and file_id(os.fstat(self.fd)) == file_id(os.stat(path)):
                self.created = file_id(os.stat(path)) if new else None
                break
            self.release()
        _remove_temporaries(*os.path.split(os.path.realpath(path)))

    def adopt(self, path):
        """Hold the lock on ``path`` (the file about to replace ours) as well; returns the descriptor of the
        old lock, which ``write_atomically`` closes once ``path`` is in place: the name is never unlocked."""
        if self.fd is None:
            return None
        fd = os.open(path, os.O_RDONLY)
        try_lock(fd)  # a fresh temporary: nobody else holds it
        old, self.fd = self.fd, fd
        return old

    def discard(self):
        """Remove the file this lock created while it is still empty and still that file: a start that is
        refused leaves no empty output file behind."""
        with contextlib.suppress(OSError):
            if self.created and self.created == file_id(os.stat(self.path)) and not os.path.getsize(self.path):
                os.remove(self.path)


class RunLocks(contextlib.ExitStack):
    """The locks of a run's --save-dir and output files, held from start-up to exit (a context manager).
    Left by an exception (a refusal), it first removes the output files it created that are still empty."""

    def __init__(self, args):
        super().__init__()
        self.outputs = []
        try:
            if args.save_dir:
                self.callback(SaveDirLock(args.save_dir).release)
            for flag, path in (("--log-file", args.log_file), ("--metrics-file", args.metrics_file)):
                self.outputs.append(OutputLock(flag, path, create=not args.resume_training))
                self.callback(self.outputs[-1].release)
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc):
        if exc[0] is not None:
            for lock in self.outputs:
                lock.discard()
        return super().__exit__(*exc)


def file_id(stat):
    """A file's identity: its device and inode (every path, link or mount of it is the same file)."""
    return stat.st_dev, stat.st_ino


def temporary_name(path, pid):
    """The temporary file ``write_atomically`` writes for ``path`` in the process ``pid``."""
    return f"{path}{TEMPORARY_MARK}{pid}"


def _gone(pid):
    """Whether no process ``pid`` exists now (this process's own count: it writes none at start-up). A pid
    reused by another process keeps a leftover; a writer on another machine is kept off by the file's lock."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no process can have that number
        return True
    except OSError:  # PermissionError: alive, another user's
        return False
    return False


def _remove_temporaries(directory, *names, legacy=False):
    """Remove the temporary files ``write_atomically`` leaves for ``directory/NAME`` when killed, of this
    process or of one that is gone; one that may not be removed (another user's, a sticky directory) is left
    with one line. ``legacy``: also NAME.tmp<pid>, as earlier versions named them (only in a --save-dir)."""
    marks = re.escape(TEMPORARY_MARK) + (r"|\.tmp" if legacy else "")
    pattern = re.compile(f"(?:{'|'.join(map(re.escape, names))})(?:{marks})(\\d+)")
    for other in os.listdir(directory):
        found = pattern.fullmatch(other)
        if found and _gone(int(found.group(1))):
            try:
                os.remove(os.path.join(directory, other))
            except FileNotFoundError:
                pass
            except OSError as exc:
                RunLog.info(f"left {os.path.join(directory, other)}, a temporary of an earlier run: cannot "
                            f"remove it ({exc.strerror or exc})")


def remove_stale_temporaries(save_dir):
    """Remove the temporary files of a checkpoint or model a killed run left (call under the directory's lock)."""
    _remove_temporaries(save_dir, CHECKPOINT_NAME, *MODEL_NAMES, legacy=True)


def remove_previous_run(save_dir):
    """Remove the checkpoint and models of the run a fresh --overwrite run replaces, before it writes its
    own g: the directory never holds one run's encoder beside another's mixing."""
    for name in (CHECKPOINT_NAME,) + MODEL_NAMES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(save_dir, name))


# What a killed start can have written past its beginning, before its first checkpoint (at its first logged
# step, step 1), per file (log, metrics): (the start of a step's line, that of step 1, those of the final
# scores). A second step line, another step's or a final one is past it: not a leftover to start over.
LEFTOVER_LINES = ((b"Step: ", re.compile(rb"Step: 1 \t"), (b"linear mean: ", b"perm mean: ")),
                  (b'{"type": "step"', re.compile(rb'\{"type": "step", "phase": "\w+", "step": 1, '),
                   (b'{"type": "final"',)))


def _is_leftover(handle, own, lines):
    """Whether the open file ``handle`` holds what a killed start of this very command leaves: a beginning of
    ``own`` (what it writes first), or all of it followed by no more than its first step (``lines``)."""
    head = handle.read(len(own))
    if not own.startswith(head):
        return False
    step, first_step, final = lines
    steps, at_line_start = 0, head.endswith(b"\n")
    while piece := handle.readline(1 << 16):  # bounded: a line may be longer than that
        is_step = at_line_start and piece.startswith(step)
        if at_line_start and piece.startswith(final) or is_step and (steps or not first_step.match(piece)):
            return False
        steps += is_step
        at_line_start = piece.endswith(b"\n")
    return True


def refuse_files_of_others(args, beginnings):
    """Refuse, for a fresh run, a --log-file or --metrics-file with other names (hard links: another run's
    save-dir file may be one), and without --overwrite one that holds more than what a killed start of this
    very command leaves (``beginnings``: (log, metrics) bytes it writes first; see ``_is_leftover``). Call
    with the files' locks held."""
    if args.resume_training:
        return
    for flag, path, own, lines in zip(("--log-file", "--metrics-file"), (args.log_file, args.metrics_file),
                                      beginnings, LEFTOVER_LINES):
        if path is None or not os.path.isfile(path):  # none yet, or a stream (/dev/null)
            continue
        links = os.stat(path).st_nlink
        if links > 1:
            raise InputError(f"argument {flag}: {path} is one of {links} names (hard links) of one file, which "
                             f"may be another run's; give a file of its own (--overwrite or not)")
        if args.overwrite or not os.path.getsize(path):
            continue
        try:
            with open(path, "rb") as handle:
                ours = _is_leftover(handle, own, lines)
        except OSError:  # write-only to us: whose it is cannot be told, so not ours
            ours = False
        if not ours:
            raise InputError(f"argument {flag}: {path} already holds {os.path.getsize(path)} bytes that this "
                             f"run did not write; give another file, or pass --overwrite to replace it")


def refuse_models_of_others(args, g):
    """Refuse, for a fresh run without --overwrite, a --save-dir with model files and no checkpoint; only a
    g.pth that holds this very run's mixing ``g`` is its own (a killed start leaves it before its first checkpoint)."""
    if not args.save_dir or args.resume_training or args.overwrite:
        return
    for name in MODEL_NAMES:
        path = os.path.join(args.save_dir, name)
        if os.path.lexists(path) and not (name == "g.pth" and _holds_exactly(path, _torch_bytes(g.state_dict()))):
            raise InputError(f"argument --save-dir: {args.save_dir} holds {name} of another run and no checkpoint "
                             f"to continue; give another directory, or pass --overwrite to replace it")


def _holds_exactly(path, data):
    """Whether the regular file ``path`` holds ``data`` and nothing else."""
    if not os.path.isfile(path) or os.path.getsize(path) != len(data):
        return False
    with open(path, "rb") as handle:
        return handle.read() == data


def write_atomically(path, data, lock=None):
    """Write ``data`` to a temporary file renamed into place: ``path`` is the old file or the new, never a cut one.
    A symbolic link is kept (its target is replaced); ``lock`` (an OutputLock) moves to the new file."""
    path = os.path.realpath(path)
    tmp = temporary_name(path, os.getpid())
    old_lock = None
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        old_lock = lock.adopt(tmp) if lock is not None else None
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise _cannot_write(path, exc) from None
    finally:
        if old_lock is not None:
            os.close(old_lock)


def save_atomically(obj, path):
    """torch.save ``obj`` to ``path`` through ``write_atomically``. Serialised in memory first, so that a
    failed write says what the system says (``No space left on device``), not torch's serialiser."""
    write_atomically(path, _torch_bytes(obj))


def _torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint_file(state, path):
    """A checkpoint: the pickled state with its SHA-256, so flipped bytes are found on load."""
    payload = _torch_bytes(state)
    save_atomically({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)


def config_fingerprint(args, device):
    """The arguments that must match for a checkpoint to be resumed."""
    config = {k: v for k, v in vars(args).items() if k not in RESUMABLE_DIFFERENCES}
    return dict(config, device_type=device.type)


def read_checkpoint(path, flag="--resume-training"):
    """The checkpoint at ``path``; InputError when it cannot be read, is damaged or is not one of ours
    (``weights_only``: a file that would run code when unpickled is refused, not run)."""
    def refused(why):
        return InputError(f"argument {flag}: {path} {why}")

    older = ("was written by an older version of main_mlp.py ({}) that this one cannot resume; start over "
             "with --overwrite")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(outer, dict) and {"config", "phase", "step"} <= set(outer):
            raise refused(older.format("without a checksum"))
        if not (isinstance(outer, dict) and isinstance(outer.get("payload"), bytes) and "sha256" in outer):
            raise refused("is not a checkpoint of main_mlp.py")
        if hashlib.sha256(outer["payload"]).hexdigest() != outer["sha256"]:
            raise refused("is damaged (its checksum does not match)")
        # On the CPU: the generators' states must be CPU tensors; load_state_dict moves the rest.
        state = torch.load(io.BytesIO(outer["payload"]), map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # a damaged or foreign file: say which, not a traceback
        raise InputError(f"argument {flag}: cannot read {path} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"config", "seed", "phase", "step"} <= set(state):
        raise refused("is not a checkpoint of main_mlp.py")
    version = state.get("format", 1)
    if type(version) is not int or version < 1:  # type: True is an int too
        raise refused(f"is of no known checkpoint format ({version!r}); this version of main_mlp.py reads "
                      f"formats 1 to {CHECKPOINT_FORMAT}")
    if version > CHECKPOINT_FORMAT:
        raise refused(f"is of checkpoint format {version!r}, written by a newer version of main_mlp.py; this one "
                      f"reads formats 1 to {CHECKPOINT_FORMAT}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise refused(older.format(f"it has no {', '.join(missing[:3])}"))
    forged = _unexpected_field(state)
    if forged is not None:
        raise refused(f"has a {forged} that main_mlp.py never writes ({reprlib.repr(state.get(forged))}): not a "
                      f"checkpoint to resume; start over with --overwrite")
    return state


def _is_int(value, low=0):
    return type(value) is int and value >= low  # type: True is an int too


def _is_file_check(check, alternatives=True):
    """A checkpoint's record of a log file (``file_check``): None, a dict, or (``alternatives``) a list of dicts."""
    if alternatives and isinstance(check, list):
        return bool(check) and all(_is_file_check(c, False) and c is not None for c in check)
    return check is None or (isinstance(check, dict) and isinstance(check.get("path"), str)
                             and _is_int(check.get("offset")) and (check.get("stream") is True or any(
                                 isinstance(check.get(key), str) for key in ("sha256", "tail_sha256"))))


def _unexpected_field(state):
    """The first field of a checkpoint's state (checksum intact) that is not of the kind a run writes, or None:
    read before anything is cut, so that a forged or foreign one is one line, not a traceback."""
    def tensor(value, dtype=None):
        return isinstance(value, torch.Tensor) and (value.dtype == dtype if dtype else value.dim() == 1
                                                    and value.is_floating_point())

    finished, last = state.get("finished", {}), state["last_logged"]
    step_line_scores = [f.name for f in disentanglement_utils.fields(numbers=True, reference=True)]
    kinds = {"seed": _is_int(state["seed"]) and state["seed"] < 2 ** 63, "config": isinstance(state["config"], dict),
             "phase": state["phase"] in tuple(LENGTH_FLAGS), "step": _is_int(state["step"], 1),
             "finished": isinstance(finished, dict) and all(name in LENGTH_FLAGS and _is_int(steps, 1)
                                                            for name, steps in finished.items()),
             **{key: isinstance(state[key], dict) for key in ("g", "encoder", "optimizer")},
             "loss_fn": state["loss_fn"] is None or isinstance(state["loss_fn"], dict),
             "loss_buffer": tensor(state["loss_buffer"]),
             **{key: tensor(state[key], torch.uint8) for key in ("rng_cpu", "rng_data")},
             "offsets": isinstance(state["offsets"], (tuple, list)) and len(state["offsets"]) == 2
             and all(map(_is_int, state["offsets"])),
             "file_checks": isinstance(state["file_checks"], (tuple, list)) and len(state["file_checks"]) == 2
             and all(map(_is_file_check, state["file_checks"])),
             "last_logged": last is None or isinstance(last, dict) and _is_int(last.get("step"), 1) and all(
                 isinstance(last.get(key), (int, float)) for key in ("loss", "mean_loss", *step_line_scores))}
    return next((key for key, ok in kinds.items() if not ok), None)


def refuse_existing_checkpoint(args):
    """A fresh run must not overwrite a checkpoint: say what is there and how to go on."""
    path = os.path.join(args.save_dir, CHECKPOINT_NAME)
    if args.resume_training or args.overwrite or not os.path.exists(path):
        return
    try:
        state = read_checkpoint(path, "--save-dir")
        where = f"at step {state['step']} of the {state['phase']} run"
    except InputError:  # unreadable: still not ours to overwrite silently
        where = "(unreadable)"
    raise InputError(f"argument --save-dir: {args.save_dir} holds a checkpoint {where}; continue it with "
                     f"--resume-training, or start over with --overwrite")


def load_resume_state(args, device, phases, defaults):
    """The checkpoint to resume, checked against this run's arguments and log files (InputError naming
    the flag when it cannot be resumed). ``phases``: {phase: its steps} of this run's phases, in order;
    ``defaults``: every flag's default, the value of a flag the checkpoint predates."""
    path = os.path.join(args.save_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise InputError(f"argument --resume-training: no checkpoint {path}")
    state = read_checkpoint(path)
    mine = {"seed": state["seed"] if args.seed is None else args.seed, **config_fingerprint(args, device)}
    theirs = {**{k: v for k, v in defaults.items() if k in mine}, **state["config"], "seed": state["seed"]}
    diff = sorted((k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)), key=lambda k: (k != "seed", k))
    if diff:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {mine.get(k)!r} here)" for k in diff[:4])
        raise InputError(f"argument --resume-training: the checkpoint in {args.save_dir} is from another "
                         f"configuration: {shown}")
    named = [state["phase"], *state.get("finished", {})]
    if any(name not in phases for name in named):
        raise InputError(f"argument --resume-training: the checkpoint in {args.save_dir} has a {' and a '.join(named)} "
                         f"phase; this run's phases are {', '.join(phases)}")
    for name, steps in state.get("finished", {}).items():
        if phases[name] != steps:
            raise InputError(f"argument {LENGTH_FLAGS[name]}: the checkpoint's {name} run has finished with "
                             f"{steps} steps; this run's would have {phases[name]}, and a resume cannot "
                             f"change a finished phase (extend the last phase instead, or start over with --overwrite)")
    total = phases[state["phase"]]
    if state["step"] > total:
        raise InputError(f"argument --n-steps: the checkpoint is at step {state['step']} of the "
                         f"{state['phase']} run, beyond this run's {total} steps")
    # The checks the files hold now (of the alternatives an interrupted restatement leaves).
    state["file_checks"] = tuple(map(verify_file, ("--log-file", "--metrics-file"), (args.log_file, args.metrics_file),
                                     state["file_checks"]))
    return state


class Survival:
    """What keeps a run's work through kills, signals and divergence: the training loop calls ``resume(phase)``
    once, ``after_step`` after every step and ``check_finite`` before it logs. A phase (main_mlp.Phase) has
    ``name``, ``total``, ``f``, ``optimizer`` and ``losses`` (the ring of its last losses)."""

    def __init__(self, run, flag):
        self.args, self.device, self.seed, self.log = run.args, run.device, run.seed, run.log
        self.generator = run.generator
        self.g, self.loss_fn, self.flag = run.exp.g, run.exp.loss_fn, flag
        self.pending = run.resume
        self.finished = dict(run.resume.get("finished", {})) if run.resume else {}  # {phase: its steps}, once it ended
        self.last_logged = None
        # None: a fresh run with a --save-dir checkpoints at its first step, whatever the cadence, so that a
        # log it leaves without a checkpoint holds no more than that step (refuse_files_of_others).
        self.last_checkpoint = None if run.resume is None and self.args.save_dir else time.monotonic()

    def resume(self, phase):
        """Restore the checkpoint into this phase; returns the first step to run (1 unless it is of this phase)."""
        state = self.pending
        if state is None or state["phase"] != phase.name:
            return 1
        phase.f.load_state_dict(state["encoder"])
        phase.optimizer.load_state_dict(state["optimizer"])
        if self.loss_fn is not None and state["loss_fn"] is not None:
            self.loss_fn.load_state_dict(state["loss_fn"])
        saved = state["loss_buffer"]  # a shorter ring when the run is being extended
        phase.losses[:saved.numel()].copy_(saved[:phase.losses.numel()])
        torch.set_rng_state(state["rng_cpu"])
        self.generator.set_state(state["rng_data"])
        self.last_logged = state["last_logged"]
        self.pending = None
        self.log.to_file = True  # the header was printed again to stdout only
        self.log.info(f"resumed the {phase.name} run after step {state['step']}")
        return state["step"] + 1

    def after_step(self, phase, step, is_log):
        """Checkpoint when due; on a signal, checkpoint and raise Stop (``is_log``: logged, so checked finite)."""
        signalled = self.flag.signum is not None  # once: a signal during the save stops after the next step
        minutes, every = self.args.checkpoint_minutes, self.args.checkpoint_every
        due = is_log if minutes is None else (self.last_checkpoint is None
                                              or time.monotonic() - self.last_checkpoint >= 60 * minutes)
        if signalled or due or step == phase.total or (every is not None and step % every == 0):
            if not is_log:  # a diverged run keeps its last finite checkpoint
                self.check_finite(phase, step)
            self.save(phase, step)
        if signalled:
            raise Stop(self.flag.signum, f"step {step} of the {phase.name} run")

    def stop_if_signalled(self, where):
        """Raise Stop when a signal has come (outside the loop: its last checkpoint is on disk)."""
        if self.flag.signum is not None:
            raise Stop(self.flag.signum, where)

    def check_finite(self, phase, step):
        """Raise Diverged, naming the step of divergence, when a loss or a parameter is not finite."""
        ring = phase.losses.numel()
        start = max(1, step - ring + 1)  # the first step whose loss the ring still holds
        recent = phase.losses.cpu()[(torch.arange(start, step + 1) - 1) % ring].tolist()
        bad = next((start + k for k, loss in enumerate(recent) if not math.isfinite(loss)), None)
        params = [*phase.f.parameters(), *(self.loss_fn.parameters() if self.loss_fn else ())]
        if bad is None and all(bool(torch.isfinite(p).all()) for p in params):
            return
        first, last = step if bad is None else bad, self.last_logged
        if first > start:  # the last finite loss: in the ring before the first bad one, else the last logged
            finite = f"last finite loss {recent[first - start - 1]:.4f} at step {first - 1}"
        elif last is not None:
            finite = f"last finite loss {last['loss']:.4f} at step {last['step']}"
        else:
            finite = "no finite loss before it"
        if last is not None:
            finite += (f"; last logged step {last['step']}: Loss {last['loss']:.4f}, <Loss> {last['mean_loss']:.4f}, "
                       f"Lin. {last['lin']:.4f}, Perm. {last['perm']:.4f}")
        raise Diverged(f"the {phase.name} run diverged at step {first}: non-finite "
                       f"{'parameters' if bad is None else 'loss'} ({finite}); try a smaller --lr / --lr-lambda")

    def save(self, phase, step):
        """The checkpoint of ``phase`` after ``step`` (nothing without --save-dir)."""
        if not self.args.save_dir:
            return
        state = {"format": CHECKPOINT_FORMAT, "config": config_fingerprint(self.args, self.device), "seed": self.seed,
                 "phase": phase.name, "step": step, "g": self.g.state_dict(), "encoder": phase.f.state_dict(),
                 "loss_fn": self.loss_fn.state_dict() if self.loss_fn is not None else None,
                 "optimizer": phase.optimizer.state_dict(), "loss_buffer": phase.losses.cpu(),
                 "rng_cpu": torch.get_rng_state(), "rng_data": self.generator.get_state(),
                 "offsets": self.log.offsets(), "file_checks": self.log.checks(), "last_logged": self.last_logged,
                 "finished": dict(self.finished)}
        save_checkpoint_file(state, os.path.join(self.args.save_dir, CHECKPOINT_NAME))
        self.last_checkpoint = time.monotonic()

    def save_models(self, phase):
        """The trained encoder of a finished phase, as the reference names it."""
        self.finished[phase.name] = phase.total
        if self.args.save_dir:
            name = "sup_f.pth" if phase.name == "supervised" else "unsup_f.pth"
            save_atomically(phase.f.state_dict(), os.path.join(self.args.save_dir, name))


def exit_status(body, prog, save_dir, extra_errors=()):
    """Call ``body()`` and say how the run ended: 0; 128 + the signal (checkpointed, how to resume);
    EXIT_DIVERGED; EXIT_WRITE_FAILED; EXIT_BAD_INPUT for ``extra_errors`` (e.g. a sampler that gives up)."""
    try:
        body()
    except Stop as stop:
        where = f"checkpoint in {save_dir}" if save_dir else "no checkpoint (no --save-dir)"
        RunLog.info(f"{prog}: stopped by {signal.Signals(stop.signum).name} after {stop.where}; {where}. "
                    + ("Resume with the same command plus --resume-training." if save_dir else ""))
        return EXIT_SIGNAL[stop.signum]
    except WriteError as exc:
        RunLog.info(f"{prog}: error: {exc}" + ("; the last checkpoint written is intact" if save_dir else ""))
        return EXIT_WRITE_FAILED
    except (Diverged, *extra_errors) as exc:
        RunLog.info(f"{prog}: error: {exc}")
        return EXIT_DIVERGED if isinstance(exc, Diverged) else EXIT_BAD_INPUT
    return 0


def keep_freed_memory():
    """Let glibc keep freed buffers instead of returning them to the OS: a CPU step frees and allocates the
    same activations every time, otherwise one page fault per 4 KB (training_logs/speed.md)."""
    with contextlib.suppress(OSError):  # no libc.so.6: another libc, macOS, Windows
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
