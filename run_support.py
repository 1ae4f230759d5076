"""The plumbing of a run, apart from the experiment: output files, signals, checkpoints, errors.

- ``RunLog``: stdout in the reference format, mirrored to ``--log-file``;
  extras on stderr; JSON lines in ``--metrics-file``.
- ``SignalFlag``: SIGINT / SIGTERM remembered, so the loop finishes its step.
- ``SaveDirLock``: one run at a time in a ``--save-dir`` (an flock held for
  the run's lifetime, released by the OS when the process dies).
- Checkpoints: written atomically (temporary file, then rename); on resume
  the checkpoint must be of the same configuration and the log files must
  still hold what it says they held, or nothing is touched.
"""

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import signal
import sys

import torch

CHECKPOINT_NAME = "checkpoint.pth"
LOCK_NAME = ".lock"
# Arguments that may differ between a run and its resumption.
RESUMABLE_DIFFERENCES = (
    "n_steps", "more_unsupervised", "save_dir", "resume_training", "log_file",
    "metrics_file", "num_eval_batches", "checkpoint_every", "compile", "seed", "overwrite",
    "device",  # auto and cpu are the same device: device_type is compared instead
    "resume_if_exists", "checkpoint_minutes",
)
# Bytes of a log file before a checkpoint's offset whose hash the checkpoint keeps.
TAIL_BYTES = 4096
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 74  # sysexits' EX_IOERR: a file could not be written (full disk, quota, size limit)
# SIGHUP (a closed terminal or ssh session) and SIGUSR2 (what SLURM sends before a
# time limit or preemption, and submitit passes on) are treated like SIGTERM.
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGUSR2: 140}


class InputError(ValueError):
    """A configuration that parses but cannot run (reported like a bad flag, exit 2)."""


class Diverged(RuntimeError):
    pass


class WriteError(OSError):
    """An output file (log, metrics, checkpoint, model) could not be written."""


class Stop(Exception):
    def __init__(self, signum, where="a completed step"):
        super().__init__(signum)
        self.signum, self.where = signum, where


class SignalFlag:
    """Remembers SIGINT/SIGTERM/SIGHUP so the loop can finish the current step first."""

    def __init__(self):
        self.signum = None
        for sig in EXIT_SIGNAL:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum


def _exit_at_once(signum, frame):
    RunLog.info(f"main_mlp.py: stopped by {signal.Signals(signum).name} during start-up; nothing written")
    sys.exit(EXIT_SIGNAL[signum])


def exit_on_signals():
    """Until the run has something to save, a signal ends it at once (no traceback)."""
    for sig in EXIT_SIGNAL:
        signal.signal(sig, _exit_at_once)


# --------------------------------------------------------------------------
# Output files


def file_check(path, offset):
    """What a checkpoint remembers of a log file: its path, the offset, a hash of the bytes before it."""
    if path is None:
        return None
    if not os.path.isfile(path):  # /dev/null, a terminal, a pipe: nothing to cut back or to verify
        return {"path": os.path.abspath(path), "offset": offset, "stream": True}
    with open(path, "rb") as handle:
        start = max(0, offset - TAIL_BYTES)
        handle.seek(start)
        tail = handle.read(offset - start)
    return {"path": os.path.abspath(path), "offset": offset, "tail_sha256": hashlib.sha256(tail).hexdigest()}


def verify_file(flag, path, check):
    """Raise InputError unless ``path`` holds what ``check`` says the checkpoint's run had written.

    The content decides, not the name: a run directory copied or moved
    elsewhere resumes, another file (or a cut one) is refused untouched.
    """
    if check is None:
        if path is not None:
            raise InputError(f"argument {flag}: the checkpoint's run wrote no {flag}, so {path} would "
                             f"start mid-run; resume without {flag}")
        return
    if path is None:
        raise InputError(f"argument {flag}: the checkpoint's run wrote {check['path']}; pass {flag} "
                         f"again to continue it")
    if check.get("stream") or not os.path.isfile(path):
        if check.get("stream") and os.path.exists(path) and not os.path.isfile(path):
            return  # a stream again (e.g. /dev/null): written to, never cut
        if check.get("stream"):
            raise InputError(f"argument {flag}: the checkpoint's run wrote to the stream {check['path']}, "
                             f"not a file; give a stream again")
        raise InputError(f"argument {flag}: {path} is missing; the checkpoint continues it after byte "
                         f"{check['offset']}")
    size = os.path.getsize(path)
    if size < check["offset"] or file_check(path, check["offset"])["tail_sha256"] != check["tail_sha256"]:
        raise InputError(f"argument {flag}: {path} does not hold what the checkpoint's run wrote "
                         f"({size} bytes; the checkpoint continues {check['path']} after byte "
                         f"{check['offset']}); give that file, or start over with --overwrite")


# Resumable arguments that change what the run is (its length, its final evaluation): a resumed
# run's files are updated to say their new values. The others (paths, --resume-training) stay as written.
RESTATED_ON_RESUME = ("n_steps", "more_unsupervised", "num_eval_batches", "checkpoint_every")


def restate_arguments(path, offset, args, metrics=False):
    """In the part of a log (or metrics file) that a checkpoint continues (up to ``offset``), give the
    RESTATED_ON_RESUME arguments their values in ``args``; returns the new offset.

    A finished run extended by ``--n-steps`` then says its new length, as an
    uninterrupted run of that length would. A file that needs no change is not touched.
    """
    if path is None or not os.path.isfile(path):
        return offset
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
                value = values[key]
                changed[k] = f"\t{key}: {value if value is not None else 'None'}\n"
    if changed == lines:
        return offset
    data = "".join(changed).encode("utf-8")
    write_atomically(path, functools.partial(_write_bytes, data))
    return len(data)


class RunLog:
    """stdout (and --log-file), stderr, and the --metrics-file JSON lines of one run.

    Args:
        truncate_at: (log offset, metrics offset) to continue the files from (resume).
    """

    def __init__(self, log_file=None, metrics_file=None, truncate_at=None):
        self.to_file = truncate_at is None  # on resume, the header goes to stdout only
        self.paths = (log_file, metrics_file)
        self.stdout_gone = False
        self.log = self._open(log_file, truncate_at[0] if truncate_at else None)
        self.metrics = self._open(metrics_file, truncate_at[1] if truncate_at else None)

    @staticmethod
    def _open(path, offset):
        if path is None:
            return None
        if offset is None:
            return open(path, "w", encoding="utf-8")
        if not os.path.isfile(path):  # a stream (e.g. /dev/null): nothing to cut back
            return open(path, "a", encoding="utf-8")
        handle = open(path, "r+", encoding="utf-8")
        handle.truncate(offset)
        handle.seek(offset)
        return handle

    def line(self, text):
        if not self.stdout_gone:
            try:
                print(text, flush=True)
            except BrokenPipeError:  # e.g. `main_mlp.py ... | head`: keep training, keep the files
                self.stdout_gone = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not fail either
                os.close(devnull)
                self.info("main_mlp.py: stdout was closed; the run goes on and writes only its files")
        if self.log is not None and self.to_file:
            self._write(self.log, self.paths[0], text + "\n")

    @staticmethod
    def info(text):
        with contextlib.suppress(OSError):  # a closed stderr must not stop the run
            print(text, file=sys.stderr, flush=True)

    def record(self, **fields):
        if self.metrics is not None and self.to_file:
            self._write(self.metrics, self.paths[1], json.dumps(fields) + "\n")

    @staticmethod
    def _write(handle, path, text):
        try:
            handle.write(text)
            handle.flush()
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None

    def offsets(self):
        return (self.log.tell() if self.log else 0, self.metrics.tell() if self.metrics else 0)

    def checks(self):
        """(log check, metrics check) for a checkpoint: see ``file_check``."""
        log_offset, metrics_offset = self.offsets()
        return (file_check(self.paths[0], log_offset) if self.log else None,
                file_check(self.paths[1], metrics_offset) if self.metrics else None)

    def close(self):
        for handle in (self.log, self.metrics):
            if handle is not None:
                handle.close()


def available_memory(device):
    """Bytes the run may still allocate on ``device``, or None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------
# The save directory and its checkpoint


class SaveDirLock:
    """An exclusive flock on ``DIR/.lock`` for the run's lifetime; the file holds the holder's pid."""

    def __init__(self, save_dir):
        self.path = os.path.join(save_dir, LOCK_NAME)
        self.handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise InputError(f"argument --save-dir: {save_dir} is in use by another run (pid {holder}); "
                             f"wait for it or use another directory") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self):
        if self.handle is not None:
            self.handle.close()  # closing drops the flock
            self.handle = None


def remove_stale_temporaries(save_dir):
    """A run killed while writing a checkpoint leaves its temporary file behind (call under the lock)."""
    for name in os.listdir(save_dir):
        if name.startswith(CHECKPOINT_NAME + ".tmp"):
            os.remove(os.path.join(save_dir, name))


def write_atomically(path, write):
    """``write(tmp)`` to a temporary file renamed into place: ``path`` is the old file or the new, never
    a cut one. Raises WriteError (the temporary file removed) when it cannot be written."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        raise WriteError(f"cannot write {path}: {cause}") from None


def _write_bytes(data, path):
    with open(path, "wb") as handle:
        handle.write(data)


def save_atomically(obj, path):
    """torch.save ``obj`` to ``path`` through ``write_atomically``."""
    write_atomically(path, functools.partial(torch.save, obj))


def save_checkpoint_file(state, path):
    """A checkpoint: the pickled state with its SHA-256, so flipped bytes are found on load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    save_atomically({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)


def config_fingerprint(args, device):
    """The arguments that must match for a checkpoint to be resumed."""
    config = {k: v for k, v in vars(args).items() if k not in RESUMABLE_DIFFERENCES}
    config["device_type"] = device.type
    return config


def read_checkpoint(path, device, flag="--resume-training"):
    """The checkpoint at ``path``; InputError when it cannot be read, is damaged or is not one of ours.

    Loaded with ``weights_only=True``: a file that would run code when unpickled is refused, not run.
    """
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(outer, dict) and isinstance(outer.get("payload"), bytes) and "sha256" in outer):
            raise InputError(f"argument {flag}: {path} is not a checkpoint of main_mlp.py")
        if hashlib.sha256(outer["payload"]).hexdigest() != outer["sha256"]:
            raise InputError(f"argument {flag}: {path} is damaged (its checksum does not match)")
        state = torch.load(io.BytesIO(outer["payload"]), map_location=device, weights_only=True)
    except InputError:
        raise
    except Exception as exc:  # a damaged or foreign file: say which, not a traceback
        raise InputError(f"argument {flag}: cannot read {path} ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"config", "seed", "phase", "step"} <= set(state):
        raise InputError(f"argument {flag}: {path} is not a checkpoint of main_mlp.py")
    return state


def refuse_existing_checkpoint(args):
    """A fresh run must not overwrite a checkpoint: say what is there and how to go on."""
    path = os.path.join(args.save_dir, CHECKPOINT_NAME)
    if args.resume_training or args.overwrite or not os.path.exists(path):
        return
    try:
        state = read_checkpoint(path, "cpu", "--save-dir")
        where = f"at step {state['step']} of the {state['phase']} run"
    except InputError:  # unreadable: still not ours to overwrite silently
        where = "(unreadable)"
    raise InputError(f"argument --save-dir: {args.save_dir} holds a checkpoint {where}; continue it with "
                     f"--resume-training, or start over with --overwrite")


def load_resume_state(args, device, paths_total):
    """The checkpoint to resume, checked against this run's arguments and log files.

    Args:
        paths_total: function (phase) -> the number of steps this run's phase has.
    Raises:
        InputError naming the flag when it cannot be resumed.
    """
    path = os.path.join(args.save_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise InputError(f"argument --resume-training: no checkpoint {path}")
    state = read_checkpoint(path, device)
    if args.seed is None:
        args.seed = state["seed"]
    mine = config_fingerprint(args, device)
    theirs = state["config"]
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if state["seed"] != args.seed:
        diff.insert(0, "seed")
    if diff:
        shown = ", ".join(f"{k} ({theirs.get(k, state['seed'] if k == 'seed' else None)!r} there, "
                          f"{mine.get(k, args.seed if k == 'seed' else None)!r} here)" for k in diff[:4])
        raise InputError(f"argument --resume-training: the checkpoint in {args.save_dir} is from another "
                         f"configuration: {shown}")
    total = paths_total(state["phase"])
    if state["step"] > total:
        raise InputError(f"argument --n-steps: the checkpoint is at step {state['step']} of the "
                         f"{state['phase']} run, beyond this run's {total} steps")
    checks = state.get("file_checks", (None, None))
    verify_file("--log-file", args.log_file, checks[0])
    verify_file("--metrics-file", args.metrics_file, checks[1])
    return state
