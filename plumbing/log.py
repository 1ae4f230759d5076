"""What a run writes (``RunLog``); a resumed run's files cut back and restated; a fresh run's refusal of others'."""

import hashlib
import json
import os

from plumbing.argparse_utils import write_stdout
from plumbing.checkpoint import save_checkpoint_file
from plumbing.errors import InputError, WriteError, cannot_write, say
from plumbing.files import file_check, write_atomically

# Resumable arguments that change what the run is (its length, its final evaluation): a resumed
# run's files are updated to say their new values. The others (paths, --resume-training) stay as written.
RESTATED_ON_RESUME = ("n_steps", "more_unsupervised", "num_eval_batches", "checkpoint_every")


class RunLog:
    """stdout (and --log-file), stderr, and the --metrics-file JSON lines of one run, each file with a running
    SHA-256 of its content for the checkpoints. ``truncate_at``: (log offset, metrics offset) of a resume."""

    info = staticmethod(say)

    def __init__(self, prog, log_file=None, metrics_file=None, truncate_at=None):
        self.prog, self.paths = prog, (log_file, metrics_file)
        self.to_file = truncate_at is None  # on resume, the header goes to stdout only
        self.stdout_gone = self.failed = False  # failed: a write failed and was said (closing may fail again)
        # (log, metrics): the binary handles (None without the file) and the running hashes of their content
        self.handles, self.hashes = zip(*map(self._open, self.paths, truncate_at or (None, None)))

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
        handle.truncate(offset)  # the position stays at offset, where the run goes on
        return handle, hashlib.sha256(prefix)

    def line(self, text):
        if not self.stdout_gone and not write_stdout(text + "\n"):
            self.stdout_gone = True
            self.info(f"{self.prog}: stdout was closed; the run goes on and writes only its files")
        self._write(0, text + "\n")

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
            raise cannot_write(self.paths[k], exc) from None
        self.hashes[k].update(data)

    def offsets(self):
        return tuple(handle.tell() if handle else 0 for handle in self.handles)

    def checks(self):
        return tuple(map(file_check, self.paths, self.offsets(), self.hashes))

    def close(self):
        """Close both files; raise WriteError for a failure no write has said (closing flushes a failed write's
        leftover again: that one is not said twice)."""
        error = None
        for handle, path in zip(self.handles, self.paths):
            try:
                if handle is not None:
                    handle.close()  # closes the descriptor even when its flush fails
            except OSError as exc:
                error = error or cannot_write(path, exc)
        if error is not None and not self.failed:
            raise error


def restated_prefix(path, offset, args, metrics=False):
    """The first ``offset`` bytes of a log (or metrics file), the RESTATED_ON_RESUME arguments given their values
    in ``args`` (an extended run says its new length); None when nothing changes."""
    if path is None or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        lines = handle.read(offset).decode("utf-8").splitlines(keepends=True)
    values, changed = {key: getattr(args, key) for key in RESTATED_ON_RESUME}, list(lines)
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
    """The RunLog of a resumed run, its files cut back to the checkpoint and restated. Every moment stays resumable:
    the checkpoint first accepts the restated files as well as the present ones, then each is replaced atomically."""
    paths, checks = (args.log_file, args.metrics_file), list(state["file_checks"])
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


def _is_leftover(handle, own, lines):
    """Whether the open file ``handle`` holds a beginning of ``own`` or all of it followed by no more than its
    first step (``lines``: see refuse_files_of_others)."""
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


def refuse_files_of_others(args, beginnings, leftovers):
    """Refuse, for a fresh run, a --log-file or --metrics-file with other names (hard links: another run's save-dir
    file may be one), and without --overwrite one that holds more than a killed start of this command leaves: per
    file, a beginning of ``beginnings`` or all of it and its first step (``leftovers``: main_mlp.LEFTOVER_LINES)."""
    if args.resume_training:
        return
    for flag, path, own, lines in zip(("--log-file", "--metrics-file"), (args.log_file, args.metrics_file),
                                      beginnings, leftovers):
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
