"""A run's checkpoint: written atomically, checksummed, read field by field, held against the run (docs/resume.md)."""

import hashlib
import io
import os
import reprlib
import typing

import torch

import settings
from plumbing.errors import InputError
from plumbing.files import CHECKPOINT_NAME, MODEL_NAMES, verify_file, write_atomically

# Arguments a resumption may change: the incidental ones, the length (an extension); the device is compared by type.
RESUMABLE_DIFFERENCES = settings.INCIDENTAL_FLAGS + ("n_steps", "more_unsupervised")
# 2: a log or metrics file is checked by the hash of all before its offset; 1 (no "format" key): of the TAIL_BYTES.
CHECKPOINT_FORMAT = 2
# The run's fields around the experiment's parts; lacking one is an older layout (not so "format", "finished").
HEAD_KEYS, TAIL_KEYS = ("config", "seed", "phase", "step"), ("loss_buffer", "rng_cpu", "rng_data", "offsets",
                                                             "file_checks", "last_logged")
OLDER = "was written by an older version of main_mlp.py ({}) that this one cannot resume; start over with --overwrite"


class Layout(typing.NamedTuple):
    """What a checkpoint keeps of the experiment. ``parts``: {a state's name in the file: whether it may be None};
    ``phases``: the phases' names; ``logged``: {a number of a logged step's record: its label in a message}."""

    parts: dict
    phases: tuple
    logged: dict


def torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_atomically(obj, path):
    """torch.save ``obj`` through ``write_atomically``, in memory first: a failed write says the system's reason."""
    write_atomically(path, torch_bytes(obj))


def save_checkpoint_file(state, path):
    """A checkpoint: the pickled state with its SHA-256, so flipped bytes are found on load."""
    payload = torch_bytes(state)
    save_atomically({"sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}, path)


def config_fingerprint(args, device):
    """The arguments that must match for a checkpoint to be resumed."""
    return dict({k: v for k, v in vars(args).items() if k not in RESUMABLE_DIFFERENCES}, device_type=device.type)


def read_checkpoint(path, layout, flag="--resume-training"):
    """The checkpoint at ``path``; InputError when it cannot be read, is damaged or is not one of ours
    (``weights_only``: a file that would run code when unpickled is refused, not run)."""
    def refused(why):
        return InputError(f"argument {flag}: {path} {why}")

    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
        ours = isinstance(outer, dict) and isinstance(outer.get("payload"), bytes) and "sha256" in outer
        intact = ours and hashlib.sha256(outer["payload"]).hexdigest() == outer["sha256"]
        # On the CPU: the generators' states must be CPU tensors; load_state_dict moves the rest.
        state = torch.load(io.BytesIO(outer["payload"]), map_location="cpu", weights_only=True) if intact else None
    except Exception as exc:  # a damaged or foreign file: say which, not a traceback
        raise InputError(f"argument {flag}: cannot read {path} ({type(exc).__name__})") from None
    if isinstance(outer, dict) and {"config", "phase", "step"} <= set(outer):
        raise refused(OLDER.format("without a checksum"))
    if ours and not intact:
        raise refused("is damaged (its checksum does not match)")
    if not isinstance(state, dict) or not set(HEAD_KEYS) <= set(state):
        raise refused("is not a checkpoint of main_mlp.py")
    version = state.get("format", 1)
    if type(version) is not int or not 1 <= version <= CHECKPOINT_FORMAT:  # type: True is an int too
        what = ("of checkpoint format {!r}, written by a newer version of main_mlp.py" if type(version) is int
                and version > 1 else "of no known checkpoint format ({!r})").format(version)
        raise refused(f"is {what}; this one reads formats 1 to {CHECKPOINT_FORMAT}")
    missing = [key for key in (*HEAD_KEYS, *layout.parts, *TAIL_KEYS) if key not in state]
    if missing:
        raise refused(OLDER.format(f"it has no {', '.join(missing[:3])}"))
    forged = _unexpected_field(state, layout)
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


def _unexpected_field(state, layout):
    """The first field of a checkpoint's state (checksum intact) not of the kind a run writes, or None."""
    def tensor(value, dtype=None):
        return isinstance(value, torch.Tensor) and (value.dim() == 1 and value.is_floating_point() if dtype is None
                                                    else value.dtype == dtype)

    def pair(value, kind):
        return isinstance(value, (tuple, list)) and len(value) == 2 and all(map(kind, value))

    finished, last = state.get("finished", {}), state["last_logged"]
    kinds = {"seed": _is_int(state["seed"]) and state["seed"] < 2 ** 63, "config": isinstance(state["config"], dict),
             "phase": state["phase"] in layout.phases, "step": _is_int(state["step"], 1),
             "finished": isinstance(finished, dict) and all(name in layout.phases and _is_int(steps, 1)
                                                            for name, steps in finished.items()),
             **{name: isinstance(state[name], dict) or none and state[name] is None
                for name, none in layout.parts.items()},
             "loss_buffer": tensor(state["loss_buffer"]), "rng_cpu": tensor(state["rng_cpu"], torch.uint8),
             "rng_data": tensor(state["rng_data"], torch.uint8), "offsets": pair(state["offsets"], _is_int),
             "file_checks": pair(state["file_checks"], _is_file_check),
             "last_logged": last is None or isinstance(last, dict) and _is_int(last.get("step"), 1) and all(
                 isinstance(last.get(key), (int, float)) for key in layout.logged)}
    return next((key for key, ok in kinds.items() if not ok), None)


def resume_state(args, device, phases, layout, defaults):
    """The checkpoint a --resume-training run continues, checked against its arguments and files (``phases``: {name:
    steps} of this run's, in order; ``defaults``: every flag's, the value of one the checkpoint predates); None for
    a fresh run, refused where it would overwrite a checkpoint."""
    path = os.path.join(args.save_dir, CHECKPOINT_NAME) if args.save_dir else None
    if not args.resume_training:
        if path is not None and not args.overwrite and os.path.exists(path):
            try:
                state = read_checkpoint(path, layout, "--save-dir")
                where = f"at step {state['step']} of the {state['phase']} run"
            except InputError:  # unreadable: still not ours to overwrite silently
                where = "(unreadable)"
            raise InputError(f"argument --save-dir: {args.save_dir} holds a checkpoint {where}; continue it with "
                             f"--resume-training, or start over with --overwrite")
        return None
    if not os.path.exists(path):
        raise InputError(f"argument --resume-training: no checkpoint {path}")
    state = read_checkpoint(path, layout)
    mine = {"seed": state["seed"] if args.seed is None else args.seed, **config_fingerprint(args, device)}
    theirs = {**{k: v for k, v in defaults.items() if k in mine}, **state["config"], "seed": state["seed"]}
    diff = sorted((k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)), key=lambda k: (k != "seed", k))
    ours = f"argument --resume-training: the checkpoint in {args.save_dir}"
    if diff:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {mine.get(k)!r} here)" for k in diff[:4])
        raise InputError(f"{ours} is from another configuration: {shown}")
    named = [state["phase"], *state.get("finished", {})]
    if any(name not in phases for name in named):
        raise InputError(f"{ours} has a {' and a '.join(named)} phase; this run's phases are {', '.join(phases)}")
    for name, steps in state.get("finished", {}).items():
        if phases[name] != steps:
            raise InputError(f"argument --n-steps: the checkpoint's {name} run has finished with {steps} steps; this "
                             f"run's would have {phases[name]}, and a resume cannot change a finished phase (extend "
                             f"the last phase instead, or start over with --overwrite)")
    if state["step"] > phases[state["phase"]]:
        raise InputError(f"argument --n-steps: the checkpoint is at step {state['step']} of the {state['phase']} "
                         f"run, beyond this run's {phases[state['phase']]} steps")
    # The checks the files hold now (of the alternatives an interrupted restatement leaves).
    state["file_checks"] = tuple(map(verify_file, ("--log-file", "--metrics-file"), (args.log_file, args.metrics_file),
                                     state["file_checks"]))
    return state


def refuse_models_of_others(args, own):
    """Refuse, for a fresh run without --overwrite, a --save-dir with model files and no checkpoint; only a file
    of ``own`` ({name: the module this run saves there before its first checkpoint}) that holds it is its own."""
    if not args.save_dir or args.resume_training or args.overwrite:
        return
    for name in MODEL_NAMES:
        path = os.path.join(args.save_dir, name)
        if os.path.lexists(path) and not (name in own and _holds_exactly(path, torch_bytes(own[name].state_dict()))):
            raise InputError(f"argument --save-dir: {args.save_dir} holds {name} of another run and no checkpoint "
                             f"to continue; give another directory, or pass --overwrite to replace it")


def _holds_exactly(path, data):
    """Whether the regular file ``path`` holds ``data`` and nothing else."""
    if not os.path.isfile(path) or os.path.getsize(path) != len(data):
        return False
    with open(path, "rb") as handle:
        return handle.read() == data
