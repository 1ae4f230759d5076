"""The signals of a run's first second: installed before anything heavy (torch) is imported.

Until the run has something to save, SIGINT, SIGTERM, SIGHUP and SIGUSR2 end the process at
once with 128 + the signal's number. ``os._exit``, not ``sys.exit``: a SystemExit raised inside
torch's import can be swallowed there, or abort the process from a C++ callback; nothing is
written yet, so nothing needs flushing. Standard library only.
"""

import os
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)


def _exit_quietly(signum, frame):
    os._exit(128 + signum)


def exit_at_once():
    for signum in SIGNALS:
        signal.signal(signum, _exit_quietly)
