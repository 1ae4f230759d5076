"""The one signal handler of a run, installed before anything heavy (torch) is imported.

SIGINT, SIGTERM, SIGHUP and SIGUSR2 (what SLURM sends before a time limit) have two modes:

- ``exit``, from the first line of main_mlp.py until the run has something to save: the
  process ends at once with 128 + the signal's number, after a one-line notice on stderr when
  one was given. ``os._exit``, not ``sys.exit``: a SystemExit raised inside torch's import can
  be swallowed there, or abort the process from a C++ callback; what start-up writes is written
  atomically, and the locks are the OS's to release.
- ``remember``, while training: the signal is only noted (``STATE.signum``), so the loop can
  finish its step, checkpoint and stop.

Standard library only.
"""

import os
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)


class _State:
    mode = "exit"
    notice = None  # the stderr line of the exit mode, "{name}" replaced by the signal's name
    signum = None  # the signal noted in the remember mode


STATE = _State()


def _handle(signum, frame):
    if STATE.mode == "remember":
        STATE.signum = signum
        return
    if STATE.notice is not None:
        try:
            os.write(2, (STATE.notice.format(name=signal.Signals(signum).name) + "\n").encode())
        except OSError:  # a closed stderr must not keep the process alive
            pass
    os._exit(128 + signum)


def exit_at_once(notice=None):
    """The exit mode (and the handler installed)."""
    STATE.mode, STATE.notice, STATE.signum = "exit", notice, None
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def remember():
    """The remember mode: from now on a signal sets ``STATE.signum``."""
    STATE.mode, STATE.signum = "remember", None
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return STATE
