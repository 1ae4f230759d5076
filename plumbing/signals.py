"""The one signal handler of a run (SIGINT, SIGTERM, SIGHUP, SIGUSR2), installed before torch is imported: "exit"
ends the process with 128 + the signal's number by ``os._exit`` (docs/resume.md, 'Stopping and resuming'),
"remember" (while training) only notes the signal."""

import contextlib
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
        with contextlib.suppress(OSError):  # a closed stderr must not keep the process alive
            os.write(2, (STATE.notice.format(name=signal.Signals(signum).name) + "\n").encode())
    os._exit(128 + signum)


def install(mode, notice=None):
    """The handler in ``mode`` ("exit" or "remember"); returns STATE, whose ``signum`` a remembered signal sets."""
    STATE.mode, STATE.notice, STATE.signum = mode, notice, None
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    return STATE
