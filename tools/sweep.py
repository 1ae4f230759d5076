"""Run main_mlp.py configurations over seeds here, as one SLURM job array (submitit) or as printed command lines,
then summarise them. How, and the exit statuses: docs/cluster.md, 'Sweeps in detail'."""

import collections
import importlib.util
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import command_line
from plumbing.argparse_utils import bounded, positive_int, reopen_closed_streams
from plumbing.files import CHECKPOINT_NAME, LOCK_NAME
from plumbing.locks import try_lock
from tools import common, logparse
from tools.common import say
from tools.sweep_summary import GLOB_CHARACTERS, PROG, error, summarize
from tools.sweep_task import THREAD_VARS, RunTask, exit_text

EXIT_OK, EXIT_RUN_FAILED = 0, 1
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, whatever the cwd
DEFAULT_SCRIPT = os.path.join(ROOT, "main_mlp.py")
OWN_FLAGS = ("--seed", "--log-file", "--metrics-file")  # set for each run here: not given after '--'
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # passed on to the runs, which checkpoint
SIGNAL_DELAY_S = 120  # SLURM's SIGUSR2 comes this long before the time limit (at most a quarter of it)
MAX_TIMEOUTS = 50  # requeues after a time limit before a task gives up (preemptions do not count)
RUN_POLL_S = 1.0  # how often to look whether another process still holds a run's --save-dir
# A log's Arguments of its run alone: its files, and what main_mlp.py was told because of what was there.
PER_RUN_ARGS = ("log_file", "metrics_file", "save_dir", "resume_training", "overwrite")


def build_parser():
    parser = common.parser(PROG, __doc__, usage=f"python -m {PROG} [options] -- MAIN_MLP_ARGS ...")
    add, positive = parser.add_argument, bounded(float, above=0)
    add("--seeds", type=bounded(int, at_least=0, at_most=2 ** 63 - 1), nargs="+", metavar="S", help="one run each seed")
    add("--jobs", type=positive_int, default=1, help="runs at a time on this machine (default: %(default)s)")
    add("--out-dir", required=True, metavar="DIR", help="where the runs' files and the summary go")
    add("--name", default="run", help="configuration name: runs write DIR/NAME_seedS.log (default: %(default)s)")
    add("--threads", type=positive_int, help="threads per run (default: CPU count // --jobs)")
    add("--python", default=sys.executable, help="the Python interpreter of the runs (default: this one)")
    add("--script", default=DEFAULT_SCRIPT, help="the training script (another is a stand-in, its arguments unchecked)")
    add("--skip-done", action="store_true", help="skip a run whose log has its final scores (same arguments only)")
    add("--executor", choices=("local", "slurm", "print"), default="local",
        help="local: --jobs runs at a time here; slurm: one SLURM job array (submitit); print: the command lines")
    add("--grid", action="append", default=[], metavar="KEY=V1,V2",
        help="a main_mlp.py flag (full or dest name) and its values (on/off for a switch); repeatable")
    add("--checkpoint-minutes", type=positive, default=10.0, help="cadence (default %(default)s) unless set after --")
    slurm = parser.add_argument_group("SLURM (--executor slurm; passed to submitit)").add_argument
    slurm("--time", type=positive, default=60.0, help="minutes per task (default 60); then it is requeued")
    slurm("--gpus", type=int, default=0, help="GPUs per task (default 0)")
    slurm("--cpus", type=positive_int, help="CPUs per task (default: --threads or 1)")
    slurm("--mem-gb", type=float, help="memory per task, GB")
    slurm("--array-parallelism", type=positive_int, help="tasks running at once (default: all)")
    for flag in ("--partition", "--account", "--qos"):
        slurm(flag)
    slurm("--setup", action="append", default=[], metavar="LINE", help="a shell line before each task (repeatable)")
    add("--summarize-only", action="store_true", help="run nothing; summarise the logs already in --out-dir")
    add("--names", nargs="+", metavar="PATTERN", help="with --summarize-only: the names (or shell globs) to summarise")
    add("--group-steps", type=positive_int, nargs="+", default=[], metavar="STEP",
        help="with --summarize-only: also the R² by ground-truth λ group at these logged steps")
    add("--summary-name", help="base name of the summary files (default: NAME_summary, or sweep_summary)")
    add("--reference", action="append", default=[], metavar="NAME=LOG", help="compare NAME's runs with a log")
    add("--note", help="a sentence to put under the summary's title")
    return parser


def parse_args(argv=None):
    """Parse and check; ``args.train_args``: after ``--``; ``args.configs``: ``[(name, extra arguments)]``."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1:]
    for item in (item for item in args.reference if not all(item.partition("=")[::2])):  # NAME and LOG
        parser.error(f"argument --reference: expected NAME=LOG, got {item!r}")
    args.references = dict(item.split("=", 1) for item in args.reference)
    name = args.name  # its runs' files are found again by it, as a shell glob
    problem = ("must not be empty" if not name else "no path separator allowed" if "/" in name or os.sep in name
               else f"none of {' '.join(GLOB_CHARACTERS)} allowed (--names reads them as a shell glob)"
               if any(ch in name for ch in GLOB_CHARACTERS) else None)
    if problem:
        parser.error(f"argument --name: {problem}, got {name!r}")
    if args.summary_name is not None and (not args.summary_name or {os.sep, "/"} & set(args.summary_name)):
        parser.error(f"argument --summary-name: a file name without a path separator, got {args.summary_name!r}")
    # The summary is written there, and with a run the logs.
    if args.executor != "print" and (problem := out_dir_problem(args.out_dir, create=not args.summarize_only)):
        parser.error(f"argument --out-dir: {problem}")
    if args.summarize_only and args.train_args:
        parser.error("--summarize-only runs nothing: drop the main_mlp.py arguments after '--'")
    if args.summarize_only:
        return args
    if args.names is not None:
        parser.error("argument --names: only with --summarize-only")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"argument --seeds: required to run or print jobs, each seed once, got {args.seeds}")
    flags = command_line.flags()
    for token in args.train_args:
        flag = expanded_flag(token, flags)
        if flag in OWN_FLAGS:
            parser.error(f"main_mlp.py argument {token}: {PROG} sets {flag} for each run itself")
        if flag == "--save-dir" and token.split("=", 1)[0] != flag:  # not found below: every seed would share it
            parser.error(f"main_mlp.py argument {token}: spell out --save-dir, which {PROG} gives each "
                         f"seed a directory of its own")
    try:
        args.configs = configurations(args.name, args.grid, flags, args.train_args)
    except ValueError as exc:
        parser.error(f"argument --grid: {exc}")
    if not os.path.isfile(args.script):
        parser.error(f"argument --script: no file {args.script}")
    if args.executor == "slurm" and importlib.util.find_spec("submitit") is None:
        parser.error("argument --executor: slurm needs submitit (pip install -r requirements-cluster.txt)")
    if args.threads is None and args.executor == "local":
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def out_dir_problem(path, create=True):
    """Why ``path`` cannot hold a sweep's files (``create``: nor be made), or None."""
    target = existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if existing != target and not create:
        return None  # reading it says it is missing
    what = path if existing == target else f"cannot make {path}: {existing}"
    if not os.path.isdir(existing):
        return f"{what} is a file" + (", not a directory" if existing == target else "")
    return None if os.access(existing, os.W_OK | os.X_OK) else f"{what} is not writable"


def expanded_flag(token, flags):
    """The flag of ``flags`` argparse would read ``token`` as (its name, or a prefix of one flag only), or None."""
    name = token.split("=", 1)[0] if token.startswith("--") else None
    candidates = [flag for flag in flags if name and flag.startswith(name)]
    return name if name in flags else candidates[0] if len(candidates) == 1 else None


def grid_flag(key, values, flags, train_args):
    """main_mlp.py's flag of a grid key: its full name (``batch-size``) or dest name, not an abbreviation."""
    flag = next((f for f in (f"--{key}", f"--{key.replace('_', '-')}") if f in flags), None)
    if flag is None:
        close = " or ".join(f for f in flags if f.startswith(f"--{key}"))
        hint = f" (did you mean {close}? give the full name)" if close else ""
        raise ValueError(f"{key} is not a flag of main_mlp.py{hint}")
    if flag in OWN_FLAGS:
        raise ValueError(f"{flag} is set for each run by {PROG}")
    switch = not flags[flag][1]
    if switch and not set(values) <= {"on", "off"}:
        raise ValueError(f"{flag} is a switch: its values are on and off, got {','.join(values)}")
    if not switch and set(values) & {"on", "off"}:
        raise ValueError(f"{flag} takes a value; on and off are for switches")
    given = next((t for t in train_args if expanded_flag(t, flags) == flag), None)
    if given is not None:
        raise ValueError(f"{flag} is also given after '--' ({given}); give it in one place")
    return flag


def configurations(base, grid, flags, train_args):
    """``[(name, extra main_mlp.py arguments)]``: every combination of the grid, ValueError for a bad item."""
    configs, keys = [(base, [])], set()
    for item in grid:
        key, sep, values = item.partition("=")
        key, values = key.strip().lstrip("-"), [v.strip() for v in values.split(",")]
        if not sep or not key or not all(values):
            raise ValueError(f"expected KEY=V1,V2,..., got {item!r}")
        if key in keys:
            raise ValueError(f"{key} is given twice; give its values in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ValueError(f"a value of {key} is repeated: {item!r}")
        keys.add(key)
        flag = grid_flag(key, values, flags, train_args)
        configs = [(f"{name}_{key}-{re.sub(r'[^A-Za-z0-9.+-]', '-', value)}",
                    extra + ([flag] if value == "on" else [] if value == "off" else [flag, value]))
                   for name, extra in configs for value in values]
    if len({name for name, _ in configs}) != len(configs):
        raise ValueError("two configurations get the same name; give distinct values")
    return configs


# One configuration at one seed: its files (log, metrics, out, err), its task, and the Arguments block
# main_mlp.py prints for it (None for a stand-in --script).
Run = collections.namedtuple("Run", "label save_dir files task expected")


class Refused(Exception):
    """A sweep that must not start (bad run arguments, or a log that would be lost or taken for another's)."""


def with_save_dir(train_args, own, out_dir):
    """``(train_args, save_dir)`` with the run's own --save-dir: ``own`` under the given one or out_dir/checkpoints."""
    argv, save_dir = list(train_args), None
    for k, token in enumerate(train_args):
        if k > 0 and train_args[k - 1] == "--save-dir":
            argv[k] = save_dir = os.path.join(token, own)
        elif token.startswith("--save-dir="):
            save_dir = os.path.join(token.split("=", 1)[1], own)
            argv[k] = f"--save-dir={save_dir}"
    if save_dir is None:
        save_dir = os.path.join(out_dir, "checkpoints", own)
        argv += ["--save-dir", save_dir]
    return argv, save_dir


def build_runs(args):
    """Every configuration over every seed; Refused when main_mlp.py's command line refuses a run's arguments."""
    check, runs = os.path.realpath(args.script) == os.path.realpath(DEFAULT_SCRIPT), []
    for name, extra in args.configs:
        for seed in args.seeds:
            stem = os.path.join(args.out_dir, f"{name}_seed{seed}")
            files = dict(log=f"{stem}.log", metrics=f"{stem}.jsonl", out=f"{stem}.out", err=f"{stem}.err")
            argv, save_dir = with_save_dir(args.train_args + extra, f"{name}_seed{seed}", args.out_dir)
            if not any(t.startswith(("--checkpoint-minutes", "--checkpoint-every")) for t in argv):
                argv += ["--checkpoint-minutes", f"{args.checkpoint_minutes:g}"]
            argv += ["--resume-if-exists", "--seed", str(seed), "--log-file", files["log"],
                     "--metrics-file", files["metrics"]]
            try:
                expected = command_line.read_args(argv) if check else None
            except ValueError as exc:
                where = f"argument --grid: configuration {name}" if extra else "the arguments after '--'"
                raise Refused(f"{where}: main_mlp.py refuses them: {exc}") from None
            task = RunTask([args.python, args.script] + argv, files["out"], files["err"], args.threads)
            runs.append(Run(f"{name} seed {seed}", save_dir, files, task, expected))
    return runs


def differences(logged, expected, partial=False):
    """How a log's Arguments differ from ``expected`` (PER_RUN_ARGS aside), in words, or ''. A whole block (all
    of the reference's flags) without a flag of ours ran with its default (command_line.OUR_DEFAULTS), as a
    resume takes it."""
    if expected is None:  # a stand-in script: nothing to compare with
        return ""
    if not partial and all(k in logged for k in command_line.REFERENCE_FLAGS):  # None printed as "None"
        defaults = {k: str(v) for k, v in command_line.OUR_DEFAULTS.items()}
        logged, expected = {**defaults, **logged}, {**defaults, **expected}
    names = list(logged) + ([] if partial else [k for k in expected if k not in logged])  # partial: a cut block
    diffs = [(k, logged.get(k, "(none)"), expected.get(k, "(none)")) for k in names
             if k not in PER_RUN_ARGS and logged.get(k) != expected.get(k)]
    if not diffs:
        return ""
    (key, then, now), more = diffs[0], len(diffs) - 1
    more = f" (and {more} more argument{'s' if more > 1 else ''})" if more else ""
    return f"{key} {then}, this sweep gives {key} {now}{more}"


def finished(log):
    return log.main_phase() is not None and log.main_phase().has_final()


def begins_as(path, start, max_lines=None):
    """Whether ``path`` is missing or begins as ``start`` (maybe cut), within ``max_lines`` lines."""
    try:
        with logparse.open_regular(path) as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        return isinstance(exc, FileNotFoundError)
    return head[:len(start)] == start[:len(head)] and (max_lines is None or head.count(b"\n") <= max_lines)


def plan_run(args, run):
    """A run whose log is there: ``run`` to start it, None to skip it (finished, --skip-done), or Refused."""
    elsewhere = "give another --name or --out-dir"
    resumable = os.path.exists(os.path.join(run.save_dir, CHECKPOINT_NAME))
    if resumable and not args.skip_done:
        return run  # main_mlp.py continues it, or refuses a checkpoint of other arguments, touching nothing
    try:
        log = logparse.parse_log(run.files["log"])
    except logparse.LogParseError as exc:
        raise Refused(f"{run.label}: {exc}: not a log to continue or keep; {elsewhere}") from None
    done = finished(log)
    header_only = (not resumable and not log.skipped and not any(p.steps for p in log.phases)
                   and begins_as(run.files["log"], b"Arguments:\n")
                   and begins_as(run.files["metrics"], b'{"type": "config"', max_lines=1))
    diff = differences(log.args, run.expected, partial=header_only)
    if diff:
        raise Refused(f"{run.label}: {run.files['log']} is {'a finished run' if done else 'a run'} with "
                      f"{diff}; {elsewhere} (nothing was run)")
    if done and args.skip_done:
        return None
    steps = [record["step"] for phase in log.phases for record in phase.steps]
    if not resumable and (done or steps not in ([], [1])):  # more than a start killed before its first checkpoint
        what = (f"has finished and {run.save_dir} holds no checkpoint to continue" if done else
                f"holds {len(steps)} logged steps and {run.save_dir} no checkpoint to continue them")
        keep = "add --skip-done to keep it, or " if done else ""
        raise Refused(f"{run.label}: {run.files['log']} {what}: it would be run again and its log overwritten; "
                      f"{keep}{elsewhere} (nothing was run)")
    return run


def not_regular(run):
    """Refused when a file the sweep or the run would open is there and not a regular file (a FIFO would block)."""
    for path in (*run.files.values(), *(os.path.join(run.save_dir, name) for name in
                                        (LOCK_NAME, CHECKPOINT_NAME))):
        try:
            logparse.open_regular(path).close()
        except logparse.NotRegularFile as exc:
            raise Refused(f"{run.label}: {path}: {exc.strerror}, not a file of a run; remove it, or give another "
                          f"--name or --out-dir (nothing was run)") from None
        except OSError:  # missing, or unreadable: the run says so
            pass


def plan_runs(args, runs):
    """``(runs to start, finished runs skipped)``, every run with a log checked before any starts."""
    for run in runs:
        not_regular(run)
    planned = [plan_run(args, run) if os.path.isfile(run.files["log"]) and os.path.getsize(run.files["log"])
               else run for run in runs]
    return [p for p in planned if p is not None], [r for r, p in zip(runs, planned) if p is None]


def lock_holder(save_dir):
    """The pid (as its lock file says) of the run that holds ``save_dir``'s lock, or None."""
    try:  # not a regular file (a FIFO): nobody's lock, and not opened in a way that waits
        handle = logparse.open_regular(os.path.join(save_dir, LOCK_NAME))
    except OSError:
        return None
    with handle:  # closing it lets go of a lock taken here
        return None if try_lock(handle) else handle.read(4096).decode("utf-8", "replace").strip() or "unknown"


def settle_failure(run, how, halt):
    """Report a run that ended with an error (``how``); True when it failed, None when ``halt`` (an Event: the
    sweep was stopped) came while it waited for another process. Its log decides, as in the summary."""
    holder = lock_holder(run.save_dir)
    if holder is not None:
        say(f"{run.label}: its run ended ({how}); another (pid {holder}) holds {run.save_dir}: waiting for it")
        while lock_holder(run.save_dir) is not None:
            if halt.wait(RUN_POLL_S):
                return None
    try:
        log = logparse.parse_log(run.files["log"])
        done, diff = finished(log), differences(log.args, run.expected)
    except logparse.LogParseError:
        done, diff = False, ""
    if done and not diff:
        say(f"{run.label}: done: its log has its final scores (after them: {how})")
        return False
    why = f"its log is of another run: {diff}" if done else last_line(run.files["err"])  # the run's error
    say(f"{run.label}: FAILED ({how}){': ' + why if why else ''} (see {run.files['err']})")
    return True


def last_line(path):
    """The last line of the text at ``path`` that is not blank, stripped, or ''."""
    try:
        with logparse.open_regular(path) as handle:
            return ([line.strip() for line in handle.read().decode("utf-8", "replace").splitlines()
                     if line.strip()] or [""])[-1]
    except OSError:
        return ""


def run_all(args, pending):
    """Run ``pending`` here, ``--jobs`` at a time; returns ``(failed runs, the stop signal or None)``."""
    stopped, halt = [], threading.Event()  # halt: ends a wait for another process's lock

    def stop(signum, frame):  # the first signal is passed on; the runs checkpoint and stop
        if not stopped:
            stopped.append(signum)
            halt.set()
            for run in pending:
                run.task.stop(signum)

    def work(run):  # runs and reports ``run`` in a worker thread; True when it failed
        t0 = time.perf_counter()
        if run.task.stopped is None:
            say(f"{run.label}: started ({args.threads} threads), log {run.files['log']}")
        try:
            run.task()
        except Exception as exc:  # the run failed, did not start, or was stopped
            if stopped:
                say(f"{run.label}: stopped ({exit_text(run.task.returncode)})")
                return False
            if run.task.returncode is None:  # it did not start
                say(f"{run.label}: FAILED: {exc} (see {run.files['err']})")
                return True
            failure = settle_failure(run, exit_text(run.task.returncode), halt)
            if failure is None:
                say(f"{run.label}: stopped while waiting for {run.save_dir}")
            return bool(failure)
        say(f"{run.label}: done in {(time.perf_counter() - t0) / 60:.1f} min")
        return False

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            failed = [run for run, failure in zip(pending, pool.map(work, pending)) if failure]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return failed, (stopped or [None])[0]


def submitit_executor(args):
    """submitit's SLURM executor, its parameters set from the flags."""
    import submitit

    executor = submitit.SlurmExecutor(folder=os.path.join(args.out_dir, "submitit", "%j"),
                                      max_num_timeout=MAX_TIMEOUTS)
    params = dict(time=int(math.ceil(args.time)), signal_delay_s=max(1, min(SIGNAL_DELAY_S, int(args.time * 15))),
                  cpus_per_task=args.cpus or args.threads or 1, ntasks_per_node=1, nodes=1, setup=list(args.setup),
                  job_name=f"sweep_{args.name}", gpus_per_node=args.gpus or None, partition=args.partition or None,
                  mem=f"{int(math.ceil(args.mem_gb))}GB" if args.mem_gb else None,
                  array_parallelism=args.array_parallelism, account=args.account, qos=args.qos)
    executor.update_parameters(**{key: value for key, value in params.items() if value is not None})
    return executor


def submit(pending, executor):
    """Submit ``pending`` as ONE job array of ``executor`` (submitit); returns the jobs."""
    # The job process imports tools.sweep_task (with this process's environment, locally and through sbatch).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    # A process started here inherits SIGUSR2 blocked: one sent while its task starts, before submitit
    # has set up its handler, then waits for the task (RunTask lets it through) and requeues it.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        with executor.batch():
            return [executor.submit(run.task) for run in pending]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def main(argv=None):
    """Run, submit, print or summarise as the flags say; returns the exit status."""
    reopen_closed_streams()
    args = parse_args(argv)
    if args.summarize_only:
        return summarize(args)
    try:
        runs = build_runs(args)
        if args.executor == "print":
            env = [f"{var}={args.threads}" for var in THREAD_VARS if args.threads]
            for run in runs:
                files = [">", shlex.quote(run.files["out"]), "2>", shlex.quote(run.files["err"])]
                say(" ".join(env + [shlex.join(run.task.argv)] + files))
            return EXIT_OK
        pending, skipped = plan_runs(args, runs)
        try:
            os.makedirs(args.out_dir, exist_ok=True)
        except OSError as exc:
            raise Refused(f"argument --out-dir: cannot make {args.out_dir} ({exc.strerror or exc})") from None
    except Refused as exc:
        return error(exc)
    for run in skipped:
        say(f"{run.label}: already finished, skipped")
    if args.executor == "slurm":
        jobs = submit(pending, submitit_executor(args)) if pending else []
        if not jobs:
            say("nothing to submit: every run has finished")
            return EXIT_OK
        say(f"submitted job array {jobs[0].job_id.split('_')[0]}: {len(jobs)} tasks; logs in {args.out_dir}, "
            f"submitit's files in {os.path.join(args.out_dir, 'submitit')}")
        say(f"when they are done: python -m {PROG} --summarize-only --out-dir {args.out_dir} "
            f"--names {' '.join(shlex.quote(n) for n, _ in args.configs)}")
        return EXIT_OK
    failed, signum = run_all(args, pending)
    if signum is not None:
        say(f"stopped by {signal.Signals(signum).name}; summarise later with --summarize-only")
        return 128 + signum
    args.names = [name for name, _ in args.configs]  # every configuration of the grid in one table
    if args.summary_name is None and len(args.names) > 1:
        args.summary_name = f"{args.name}_grid_summary"
    status = summarize(args)
    if failed:
        say(f"{len(failed)} of {len(pending)} runs failed: " + ", ".join(run.label for run in failed))
        return EXIT_RUN_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
