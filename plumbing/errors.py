"""How a run ends when it does not succeed: its errors, their exit statuses, the line that says why."""

import contextlib
import signal
import sys

EXIT_BAD_INPUT, EXIT_DIVERGED = 2, 3
EXIT_WRITE_FAILED = 74  # sysexits' EX_IOERR: a file could not be written (full disk, quota, size limit)
# SIGHUP (a closed terminal or ssh session) and SIGUSR2 (SLURM's) end a run like SIGTERM (docs/resume.md).
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129, signal.SIGUSR2: 140}


class InputError(ValueError):
    """A configuration that parses but cannot run (reported like a bad flag, exit 2)."""


class Diverged(RuntimeError):
    """A loss, a parameter or the encoder's output is not finite (exit 3)."""


class WriteError(OSError):
    """An output file (log, metrics, checkpoint, model, lock) could not be written (exit 74)."""


class Stop(Exception):
    def __init__(self, signum, where="a completed step"):
        super().__init__(signum)
        self.signum, self.where = signum, where


def cannot_write(path, exc):
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def say(text):
    with contextlib.suppress(OSError):  # a closed stderr must not stop the run
        print(text, file=sys.stderr, flush=True)


def exit_status(body, prog, save_dir, extra_errors=()):
    """Run ``body()``; say how it ended and return the status (EXIT_BAD_INPUT for ``extra_errors``)."""
    try:
        body()
    except Stop as stop:
        where = f"checkpoint in {save_dir}" if save_dir else "no checkpoint (no --save-dir)"
        say(f"{prog}: stopped by {signal.Signals(stop.signum).name} after {stop.where}; {where}. "
            + ("Resume with the same command plus --resume-training." if save_dir else ""))
        return EXIT_SIGNAL[stop.signum]
    except WriteError as exc:
        say(f"{prog}: error: {exc}" + ("; the last checkpoint written is intact" if save_dir else ""))
        return EXIT_WRITE_FAILED
    except (Diverged, *extra_errors) as exc:
        say(f"{prog}: error: {exc}")
        return EXIT_DIVERGED if isinstance(exc, Diverged) else EXIT_BAD_INPUT
    return 0
