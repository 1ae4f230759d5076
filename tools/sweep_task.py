"""One run of a sweep as a submitit task (tools.sweep's local executor runs it in a thread): main_mlp.py as a
child process that survives preemption (docs/cluster.md). It imports nothing of the project: submitit pickles
the task by reference, and the job process imports ``tools.sweep_task`` (the repository on its PYTHONPATH)."""

import os
import signal
import subprocess
import sys
import time

try:  # needed on the cluster only; the local executor runs the same task without it
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:
    Checkpointable, DelayedSubmission = object, None

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set to a run's threads
CHECKPOINT_WAIT_S = 120  # how long the child may take to finish its step and write its checkpoint


def exit_text(returncode):
    """A child's end in words: ``exit 1``, or ``killed by SIGKILL, exit -9``."""
    if returncode is None or returncode >= 0:
        return f"exit {returncode}"
    name = signal.Signals(-returncode).name if -returncode in set(signal.Signals) else f"signal {-returncode}"
    return f"killed by {name}, exit {returncode}"


def _reap(pid, timeout):
    """Wait at most ``timeout`` seconds for the child ``pid`` to exit; True when it has. os.waitpid, not
    Popen.wait: this runs in a signal handler that may have interrupted Popen.wait, which holds its lock."""
    for _ in range(int(timeout * 20)):  # every 0.05 s
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return True
        except ChildProcessError:  # reaped already
            return True
        time.sleep(0.05)
    return False


class RunTask(Checkpointable):
    """Run ``argv`` (interpreter first) with stdout/stderr appended to two files (each start of the task adds to
    them), ``threads`` OMP/MKL threads; a call returns the exit status, or raises RuntimeError(exit_text)."""

    def __init__(self, argv, out_path, err_path, threads=None):
        self.argv, self.out_path, self.err_path, self.threads = list(argv), out_path, err_path, threads
        self.child = self.returncode = self.stopped = None  # stopped: the signal of stop(), if any

    def __call__(self):
        # sweep.submit starts submitit's tasks with SIGUSR2 blocked (one sent before submitit has set up
        # its handler waits); let through here, it checkpoints and requeues, and the child gets it too.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        env = dict(os.environ, **{var: str(self.threads) for var in THREAD_VARS if self.threads})
        if self.stopped is None:  # a task stopped before it started does not start
            with open(self.out_path, "a", encoding="utf-8") as out, \
                    open(self.err_path, "a", encoding="utf-8") as err:
                self.child = subprocess.Popen(self.argv, stdout=out, stderr=err, env=env)
                self.returncode = self.child.wait()
        if self.returncode != 0:
            raise RuntimeError(exit_text(self.returncode))
        return self.returncode

    def stop(self, signum):
        """Pass ``signum`` to the run (it checkpoints and exits); a task not started yet will not start."""
        self.stopped = signum
        if self.child is not None:
            self.child.send_signal(signum)  # nothing once it has ended

    def checkpoint(self, *args, **kwargs):
        """Called by submitit before a preemption or the time limit: stop the child cleanly, requeue afresh."""
        if self.child is not None:
            self.child.send_signal(signal.SIGUSR2)  # main_mlp.py: finish the step, checkpoint, exit
            if not _reap(self.child.pid, CHECKPOINT_WAIT_S):
                print(f"sweep_task: the run did not stop within {CHECKPOINT_WAIT_S} s; requeued from its "
                      f"previous checkpoint", file=sys.stderr)
        return DelayedSubmission(RunTask(self.argv, self.out_path, self.err_path, self.threads))
