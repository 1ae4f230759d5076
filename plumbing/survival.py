"""What keeps a run's work through kills, signals and divergence (``Survival``); the memory it may take."""

import contextlib
import ctypes
import math
import os
import time

import torch

from plumbing.checkpoint import CHECKPOINT_FORMAT, config_fingerprint, save_atomically, save_checkpoint_file
from plumbing.errors import Diverged, InputError, Stop
from plumbing.files import CHECKPOINT_NAME


class Survival:
    """The loop calls ``resume(phase)`` once, ``after_step`` after every step, ``check_finite`` before it logs and
    ``finish`` at a phase's end. ``run``: args, device, seed, log, generator (the data's), resume (a state or None);
    a phase: name, total, losses (its ring), parts ({name: what gives and takes a state dict, or None})."""

    def __init__(self, run, flag, layout):
        self.run, self.args, self.log, self.flag, self.layout = run, run.args, run.log, flag, layout
        self.pending, self.last_logged = run.resume, None
        self.finished = dict(run.resume.get("finished", {})) if run.resume else {}  # {phase: its steps}, once it ended
        # None: a fresh run with a --save-dir checkpoints at its first step, whatever the cadence (docs/resume.md)
        self.last_checkpoint = None if run.resume is None and self.args.save_dir else time.monotonic()

    def resume(self, phase):
        """Restore the checkpoint into this phase; returns the first step to run (1 unless it is of this phase)."""
        state = self.pending
        if state is None or state["phase"] != phase.name:
            return 1
        for name, part in phase.parts.items():
            if part is not None and state[name] is not None:
                part.load_state_dict(state[name])
        saved = state["loss_buffer"]  # a shorter ring when the run is being extended
        phase.losses[:saved.numel()].copy_(saved[:phase.losses.numel()])
        torch.set_rng_state(state["rng_cpu"])
        self.run.generator.set_state(state["rng_data"])
        self.last_logged, self.pending = state["last_logged"], None
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
        modules = [part for part in phase.parts.values() if isinstance(part, torch.nn.Module)]
        if bad is None and all(bool(torch.isfinite(p).all()) for module in modules for p in module.parameters()
                               if p.requires_grad):  # the frozen mixing g cannot diverge
            return
        first, last = step if bad is None else bad, self.last_logged
        # the last finite loss: in the ring before the first bad one, else the last logged
        finite = (f"last finite loss {recent[first - start - 1]:.4f} at step {first - 1}" if first > start else
                  "no finite loss before it" if last is None else
                  f"last finite loss {last['loss']:.4f} at step {last['step']}")
        if last is not None:
            finite += f"; last logged step {last['step']}: " + ", ".join(
                f"{label} {last[key]:.4f}" for key, label in self.layout.logged.items())
        raise Diverged(f"the {phase.name} run diverged at step {first}: non-finite "
                       f"{'parameters' if bad is None else 'loss'} ({finite}); try a smaller --lr / --lr-lambda")

    def save(self, phase, step):
        """The checkpoint of ``phase`` after ``step`` (nothing without --save-dir)."""
        if not self.args.save_dir:
            return
        run = self.run
        state = {"format": CHECKPOINT_FORMAT, "config": config_fingerprint(self.args, run.device), "seed": run.seed,
                 "phase": phase.name, "step": step,
                 **{name: None if part is None else part.state_dict() for name, part in phase.parts.items()},
                 "loss_buffer": phase.losses.cpu(), "rng_cpu": torch.get_rng_state(),
                 "rng_data": run.generator.get_state(), "offsets": self.log.offsets(), "file_checks": self.log.checks(),
                 "last_logged": self.last_logged, "finished": dict(self.finished)}
        save_checkpoint_file(state, os.path.join(self.args.save_dir, CHECKPOINT_NAME))
        self.last_checkpoint = time.monotonic()

    def finish(self, phase, models):
        """Note ``phase`` as finished and save its ``models`` ({file name in the --save-dir: module})."""
        self.finished[phase.name] = phase.total
        for name, model in models.items() if self.args.save_dir else ():
            save_atomically(model.state_dict(), os.path.join(self.args.save_dir, name))


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
                         f"peak, the {device.type} has {have / 2**30:.1f} GiB available; lower --batch-size or --n")


def keep_freed_memory():
    """Let glibc keep freed buffers, not return them to the OS (a page fault per 4 KB: training_logs/speed.md)."""
    with contextlib.suppress(OSError):  # no libc.so.6: another libc, macOS, Windows
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
