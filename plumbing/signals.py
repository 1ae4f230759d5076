"""The one signal handler of a run (SIGINT, SIGTERM, SIGHUP, SIGUSR2), installed before torch is imported. Until
the run has something to save ("exit"), a signal ends the process with 128 + its number by ``os._exit``: a SystemExit
raised inside torch's import can be swallowed there, or abort the process from a C++ callback (what start-up writes
is written atomically, the locks are the OS's to release). While training ("remember"), it is only noted."""

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


def install(mode, notice=None):
    """The handler in ``mode`` ("exit" or "remember"); returns STATE, whose ``signum`` a remembered signal sets."""
    STATE.mode, STATE.notice, STATE.signum = mode, notice, None
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return STATE
