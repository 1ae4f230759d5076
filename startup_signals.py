"""The one signal handler of a run (SIGINT, SIGTERM, SIGHUP, SIGUSR2), installed before anything heavy
(torch) is imported. Standard library only.

- ``exit``, from the first line of main_mlp.py until the run has something to save: the process ends
  at once with 128 + the signal's number, after a one-line notice on stderr when one was given.
  ``os._exit``, not ``sys.exit``: a SystemExit raised inside torch's import can be swallowed there,
  or abort the process from a C++ callback; what start-up writes is written atomically, and the
  locks are the OS's to release.
- ``remember``, while training: the signal is only noted (``STATE.signum``), so the loop can finish
  its step, checkpoint and stop.
"""

import os
import signal
import types

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)
# notice: the stderr line of the exit mode, "{name}" replaced by the signal's name.
STATE = types.SimpleNamespace(mode="exit", notice=None, signum=None)


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


def _install(mode, notice=None):
    STATE.mode, STATE.notice, STATE.signum = mode, notice, None
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return STATE


def exit_at_once(notice=None):
    """The exit mode (and the handler installed)."""
    _install("exit", notice)


def remember():
    """The remember mode: from now on a signal sets ``STATE.signum``."""
    return _install("remember")
