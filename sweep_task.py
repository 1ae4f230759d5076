"""One run of a sweep as a submitit task: main_mlp.py as a child process that survives preemption.

The task starts ``main_mlp.py ... --save-dir D --resume-if-exists``, so any
start of it (the first, a requeue by submitit, SLURM's own requeue, a plain
resubmission) continues the run from its last checkpoint. When the job is
about to be preempted or hit its time limit, submitit calls ``checkpoint``:
it passes the signal (SIGUSR2) to the child, which finishes its step, writes
a checkpoint and exits, and hands submitit the same task to requeue.

sweep.py's local executor runs the same task in a thread (``stop`` passes a
signal on). A module of its own (not sweep.py): submitit pickles the task by
reference, and the job process must be able to import it by this name, so it
imports nothing of the project.
"""

import os
import signal
import subprocess
import sys
import time

try:  # needed on the cluster only; the local executor runs the same task without it
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:
    Checkpointable, DelayedSubmission = object, None

# How long the child may take to finish its step and write its checkpoint.
CHECKPOINT_WAIT_S = 120


def exit_text(returncode):
    """A child's end in words: ``exit 1``, or ``killed by SIGKILL, exit -9``."""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}, exit {returncode}"
    return f"exit {returncode}"


class RunFailed(RuntimeError):
    """The run ended with an error or by a signal; the message is its ``exit_text``."""


def _reap(pid, timeout):
    """Wait for the child ``pid`` to exit, at most ``timeout`` seconds; True when it has.

    os.waitpid, not Popen.wait: this runs in a signal handler that may have
    interrupted Popen.wait in __call__, which holds the Popen's wait lock.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return True
        if done:
            return True
        time.sleep(0.05)
    return False


class RunTask(Checkpointable):
    """Run ``argv`` (main_mlp.py's command line) with stdout/stderr appended to two files.

    Args:
        argv: the full command, interpreter first.
        out_path, err_path: where the child's stdout and stderr go (appended:
            each start of the task adds to them).
        threads: OMP_NUM_THREADS / MKL_NUM_THREADS of the child, or None.
    Returns (from a call): the child's exit status.
    """

    def __init__(self, argv, out_path, err_path, threads=None):
        self.argv, self.out_path, self.err_path, self.threads = list(argv), out_path, err_path, threads
        self.child = None
        self.returncode = None
        self.stopped = None  # the signal of stop(), if any

    def __call__(self):
        # sweep.submit starts submitit's tasks with SIGUSR2 blocked, so that one sent while the task
        # starts (before submitit has set up its handler) waits instead of ending it; let through
        # here, it checkpoints and requeues the task. And before the child starts: it inherits the
        # mask, and must get SIGUSR2 to checkpoint.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        env = dict(os.environ)
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if self.stopped is None:  # a task stopped before it started does not start
            with open(self.out_path, "a", encoding="utf-8") as out, \
                    open(self.err_path, "a", encoding="utf-8") as err:
                self.child = subprocess.Popen(self.argv, stdout=out, stderr=err, env=env)
                self.returncode = self.child.wait()
        if self.returncode != 0:
            raise RunFailed(exit_text(self.returncode))
        return self.returncode

    def stop(self, signum):
        """Pass ``signum`` to the run (it checkpoints and exits); a task not started yet will not start."""
        self.stopped = signum
        child = self.child
        if child is not None and child.returncode is None:
            child.send_signal(signum)

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a preemption or the time limit: stop the child cleanly, requeue."""
        child = self.child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGUSR2)  # main_mlp.py: finish the step, checkpoint, exit
            if not _reap(child.pid, CHECKPOINT_WAIT_S):
                print(f"sweep_task: the run did not stop within {CHECKPOINT_WAIT_S} s; requeued from its "
                      f"previous checkpoint", file=sys.stderr)
        return DelayedSubmission(RunTask(self.argv, self.out_path, self.err_path, self.threads))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["child"] = None  # a process is not pickled with the task
        return state
