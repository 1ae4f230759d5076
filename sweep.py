"""Run main_mlp.py configurations over seeds: here (``--executor local``), as one SLURM job array
(``slurm``, through submitit), or as printed command lines (``print``); then summarise them.

    python sweep.py --seeds 0 1 2 --jobs 2 --out-dir runs/sweep --name bimodal -- <main_mlp.py arguments>

Each run gets its own --seed, --log-file, --metrics-file and --save-dir, and --resume-if-exists: a
sweep started again continues its runs. Every run's arguments are checked with main_mlp.py's own
command line before any starts. Exit status: 0 done (or submitted); 1 a run failed; 2 bad arguments,
unreadable logs or refused runs; 128 + the signal's number when stopped by SIGINT, SIGTERM or SIGHUP.
"""

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import shlex
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import command_line
import logparse
import settings
from argparse_utils import EXIT_BAD_INPUT, ArgumentParser, positive_int, reopen_closed_streams
from file_lock import try_lock
from sweep_summary import GLOB_CHARACTERS, say, summarize
from sweep_task import RunTask, exit_text

PROG = "sweep.py"
EXIT_OK, EXIT_RUN_FAILED = 0, 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCRIPT = os.path.join(HERE, "main_mlp.py")
OWN_FLAGS = ("--seed", "--log-file", "--metrics-file")  # set for each run here: not given after '--'
EXECUTORS = ("local", "slurm", "print")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # passed on to the runs, which checkpoint
SIGNAL_DELAY_S = 120  # SLURM's SIGUSR2 comes this long before the time limit (at most a quarter of it)
MAX_TIMEOUTS = 50  # requeues after a time limit before a task gives up (preemptions do not count)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RUN_POLL_S = 1.0  # how often to look whether another process still holds a run's --save-dir
# The Arguments of a log that are its run's own, not its configuration's: its files, and what
# main_mlp.py was told because of what was there (a checkpoint to resume, a header to write over).
PER_RUN_ARGS = ("log_file", "metrics_file", "save_dir", "resume_training", "overwrite")


def _seed(text):
    value = int(text)
    if not 0 <= value < 2 ** 63:  # main_mlp.py's --seed
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {text}")
    return value


def build_parser():
    """The command line: one add_argument per flag (so this is long)."""
    parser = ArgumentParser(prog=PROG, usage=f"{PROG} [options] -- MAIN_MLP_ARGS ...",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--seeds", type=_seed, nargs="+", default=None, metavar="S", help="the seeds to run (one run each)")
    add("--jobs", type=positive_int, default=1, help="runs at a time on this machine (default: %(default)s)")
    add("--out-dir", required=True, metavar="DIR", help="where the runs' files and the summary go")
    add("--name", default="run", help="configuration name: runs write DIR/NAME_seedS.log (no '/' and none of "
                                      "*?[] in it; default: %(default)s)")
    add("--threads", type=positive_int, default=None, help="threads per run (default: CPU count // --jobs)")
    add("--python", default=sys.executable, help="the Python interpreter of the runs (default: this one)")
    add("--script", default=DEFAULT_SCRIPT, help="the training script (default: main_mlp.py here; another is a "
                                                 "stand-in whose arguments are not checked)")
    add("--skip-done", action="store_true",
        help="do not rerun a seed whose log has its final scores (a log of other arguments is refused)")
    add("--executor", choices=EXECUTORS, default="local",
        help="local: subprocesses here, --jobs at a time, then the summary; slurm: one SLURM job array "
             "through submitit, then return; print: the command lines, run nothing (default: local)")
    add("--grid", action="append", default=[], metavar="KEY=V1,V2",
        help="a main_mlp.py flag by its full name (without --) or dest name, and its values, one configuration "
             "each; on/off for switches; repeatable: every combination runs, each over --seeds")
    add("--checkpoint-minutes", type=float, default=10.0,
        help="checkpoint cadence of the runs (default %(default)s), unless the main_mlp.py arguments set one")
    slurm = parser.add_argument_group("SLURM (--executor slurm; passed to submitit)")
    slurm.add_argument("--partition", default=None, help="partition")
    slurm.add_argument("--time", type=float, default=60.0,
                       help="time limit per task, minutes (default 60); a task that hits it is requeued")
    slurm.add_argument("--gpus", type=int, default=0, help="GPUs per task (default 0)")
    slurm.add_argument("--cpus", type=positive_int, default=None, help="CPUs per task (default: --threads or 1)")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per task, GB")
    slurm.add_argument("--array-parallelism", type=positive_int, default=None,
                       help="tasks of the array running at once (the %%P of the array; default: all)")
    slurm.add_argument("--account", default=None, help="account to charge")
    slurm.add_argument("--qos", default=None, help="quality of service")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each task, e.g. 'module load cuda' (repeatable)")
    add("--summarize-only", action="store_true", help="run nothing; summarise the logs already in --out-dir")
    add("--names", nargs="+", default=None, metavar="PATTERN",
        help="with --summarize-only: the configuration names (or shell globs) to put in one table")
    add("--group-steps", type=positive_int, nargs="+", default=[], metavar="STEP",
        help="with --summarize-only: also give the R² by ground-truth λ group at these logged steps")
    add("--summary-name", default=None, help="base name of the summary files in --out-dir (default: "
                                             "NAME_summary, or sweep_summary for several names)")
    add("--reference", action="append", default=[], metavar="NAME=LOG",
        help="set the runs of configuration NAME beside a reference log at their last common step")
    add("--note", default=None, help="a sentence to put under the summary's title")
    return parser


def parse_args(argv=None):
    """Parse and check; ``args.train_args``: the arguments after ``--``; ``args.configs``: the grid's
    ``[(name, extra arguments)]``."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1:]
    args.references = {}
    for item in args.reference:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"argument --reference: expected NAME=LOG, got {item!r}")
        args.references[name] = path
    problem = name_problem(args.name)
    if problem:
        parser.error(f"argument --name: {problem}, got {args.name!r}")
    if args.summary_name is not None and (not args.summary_name or os.sep in args.summary_name
                                          or "/" in args.summary_name):
        parser.error(f"argument --summary-name: a file name without a path separator, got {args.summary_name!r}")
    args.print_jobs = args.executor == "print"
    if not args.print_jobs:  # the summary is written there, and with a run the logs
        problem = out_dir_problem(args.out_dir, create=not args.summarize_only)
        if problem:
            parser.error(f"argument --out-dir: {problem}")
    if args.summarize_only:
        if args.train_args:
            parser.error("--summarize-only runs nothing: drop the main_mlp.py arguments after '--'")
        args.configs = [(args.name, [])]
        return args
    check_run_arguments(parser, args)
    if args.threads is None and args.executor == "local":
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def check_run_arguments(parser, args):
    """Refuse (exit 2) what the runs cannot be given; sets ``args.configs``."""
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
        args.configs = configurations(args.name, parse_grid(args.grid), flags, args.train_args)
    except ValueError as exc:
        parser.error(f"argument --grid: {exc}")
    if not os.path.isfile(args.script):
        parser.error(f"argument --script: no file {args.script}")
    for flag, value in (("--time", args.time), ("--checkpoint-minutes", args.checkpoint_minutes)):
        if not (value > 0 and math.isfinite(value)):
            parser.error(f"argument {flag}: must be a positive number, got {value}")
    if args.executor == "slurm" and importlib.util.find_spec("submitit") is None:
        parser.error("argument --executor: slurm needs submitit (pip install -r requirements-cluster.txt)")


def name_problem(name):
    """What makes ``name`` unusable as a configuration name (its runs' files are found again by it, as
    a shell glob), or None."""
    problems = ((not name, "must not be empty"), ("/" in name or os.sep in name, "no path separator allowed"),
                (any(ch in name for ch in GLOB_CHARACTERS),
                 f"none of {' '.join(GLOB_CHARACTERS)} allowed (--names reads them as a shell glob)"))
    return next((problem for bad, problem in problems if bad), None)


def out_dir_problem(path, create=True):
    """Why ``path`` cannot hold a sweep's files (a file, unwritable, or with ``create`` a directory that
    cannot be made), or None."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} is a file, not a directory"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    if not create:
        return None  # reading it says it is missing
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot make {path}: {parent} is a file"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot make {path}: {parent} is not writable"


def parse_grid(grid):
    """``[(key, [values])]`` of the ``--grid KEY=V1,V2`` items (KEY without its dashes); ValueError for
    an item that is not KEY=V1,V2,..., a key given twice or a value repeated."""
    items = {}
    for item in grid:
        key, sep, values = item.partition("=")
        key, values = key.strip().lstrip("-"), [v.strip() for v in values.split(",")]
        if not sep or not key or not all(values):
            raise ValueError(f"expected KEY=V1,V2,..., got {item!r}")
        if key in items:
            raise ValueError(f"{key} is given twice; give its values in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ValueError(f"a value of {key} is repeated: {item!r}")
        items[key] = values
    return list(items.items())


def expanded_flag(token, flags):
    """The flag of ``flags`` argparse would read ``token`` as (its name, or a prefix of one flag only), or None."""
    name = token.split("=", 1)[0] if token.startswith("--") else None
    candidates = [flag for flag in flags if name and flag.startswith(name)]
    return name if name in flags else candidates[0] if len(candidates) == 1 else None


def grid_flag(key, values, flags, train_args):
    """main_mlp.py's flag of a grid key: a flag's full name without its dashes (``batch-size``) or its
    dest name (``batch_size``), not an abbreviation (``see`` would be ``--seed`` behind our back)."""
    flag = next((f for f in (f"--{key}", f"--{key.replace('_', '-')}") if f in flags), None)
    if flag is None:
        close = [f for f in flags if f.startswith(f"--{key}")]
        hint = f" (did you mean {' or '.join(close)}? give the full name)" if close else ""
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


def configurations(base, items, flags, train_args):
    """``[(name, extra main_mlp.py arguments)]``: every combination of the grid's values, named
    ``base_KEY-VALUE...``; ``on``/``off`` give a switch or nothing."""
    configs = [(base, [])]
    for key, values in items:
        flag = grid_flag(key, values, flags, train_args)
        configs = [(f"{name}_{key}-{re.sub(r'[^A-Za-z0-9.+-]', '-', value)}",
                    extra + ([flag] if value == "on" else [] if value == "off" else [flag, value]))
                   for name, extra in configs for value in values]
    if len({name for name, _ in configs}) != len(configs):
        raise ValueError("two configurations get the same name; give distinct values")
    return configs


# --------------------------------------------------------------------------
# The runs


@dataclasses.dataclass
class Run:
    """One configuration at one seed. ``expected``: the Arguments block main_mlp.py prints for ``argv``
    (None for a stand-in ``--script``)."""

    name: str
    seed: int
    argv: list  # main_mlp.py's arguments
    save_dir: str
    files: dict  # log, metrics, out, err
    expected: dict = None

    @property
    def label(self):
        return f"{self.name} seed {self.seed}"


class Refused(Exception):
    """A sweep that must not start (bad run arguments, or a log that would be lost or taken for another's)."""


def with_save_dir(train_args, name, seed, out_dir):
    """``(train_args with a --save-dir of the run's own, that directory)``: the given one's subdirectory
    NAME_seedS, else ``out_dir/checkpoints/NAME_seedS`` (every run of a sweep can be resumed)."""
    result, save_dir, own = [], None, f"{name}_seed{seed}"
    for k, token in enumerate(train_args):
        if k > 0 and train_args[k - 1] == "--save-dir":
            token = save_dir = os.path.join(token, own)
        elif token.startswith("--save-dir="):
            save_dir = os.path.join(token.split("=", 1)[1], own)
            token = f"--save-dir={save_dir}"
        result.append(token)
    if save_dir is None:
        save_dir = os.path.join(out_dir, "checkpoints", own)
        result += ["--save-dir", save_dir]
    return result, save_dir


def build_runs(args):
    """Every configuration over every seed, each run's arguments checked by main_mlp.py's command line.

    Raises:
        Refused: main_mlp.py would refuse a run's arguments (naming --grid when the run has grid values).
    """
    check = os.path.realpath(args.script) == os.path.realpath(DEFAULT_SCRIPT)
    runs = []
    for name, extra in args.configs:
        for seed in args.seeds:
            stem = os.path.join(args.out_dir, f"{name}_seed{seed}")
            files = {kind: f"{stem}.{ext}" for kind, ext in (("log", "log"), ("metrics", "jsonl"),
                                                              ("out", "out"), ("err", "err"))}
            argv, save_dir = with_save_dir(args.train_args + extra, name, seed, args.out_dir)
            if not any(t.startswith(("--checkpoint-minutes", "--checkpoint-every")) for t in argv):
                argv += ["--checkpoint-minutes", f"{args.checkpoint_minutes:g}"]
            argv += ["--resume-if-exists", "--seed", str(seed), "--log-file", files["log"],
                     "--metrics-file", files["metrics"]]
            try:
                expected = command_line.read_args(argv) if check else None
            except ValueError as exc:
                where = f"argument --grid: configuration {name}" if extra else "the arguments after '--'"
                raise Refused(f"{where}: main_mlp.py refuses them: {exc}") from None
            runs.append(Run(name, seed, argv, save_dir, files, expected))
    return runs


def run_task(args, run):
    """The run as a task (sweep_task): here in a thread, or on the cluster."""
    return RunTask([args.python, args.script] + run.argv, run.files["out"], run.files["err"], args.threads)


def job_line(args, run):
    """One shell line: the run with its stdout/stderr redirected to its files."""
    env = "".join(f"{var}={args.threads} " for var in THREAD_VARIABLES) if args.threads else ""
    return (f"{env}{shlex.join([args.python, args.script] + run.argv)} > {shlex.quote(run.files['out'])} "
            f"2> {shlex.quote(run.files['err'])}")


def differing_arguments(logged, expected, partial=False):
    """``[(name, value in the log, value now)]``, PER_RUN_ARGS aside; ``partial``: the log's block may be
    cut (a run killed while writing it), so only the names it has are compared."""
    if expected is None:  # a stand-in script: nothing to compare with
        return []
    names = list(logged) + ([] if partial else [k for k in expected if k not in logged])
    return [(k, logged.get(k, "(none)"), expected.get(k, "(none)")) for k in names
            if k not in PER_RUN_ARGS and logged.get(k) != expected.get(k)]


def differences_text(diffs):
    key, then, now = diffs[0]
    more = f" (and {len(diffs) - 1} more argument{'s' if len(diffs) > 2 else ''})" if len(diffs) > 1 else ""
    return f"{key} {then}, this sweep gives {key} {now}{more}"


def begins_as(path, start, max_lines=None):
    """Whether the file at ``path`` is missing, or begins as ``start`` (or is cut inside it) within
    ``max_lines`` lines: what a run killed while writing its first lines leaves, and no other file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return head[:len(start)] == start[:len(head)] and (max_lines is None or head.count(b"\n") <= max_lines)


def plan_run(args, run):
    """Whether to start a run whose log is already there: ``run`` itself (main_mlp.py takes a log that
    begins with the run's own header, e.g. one killed while writing it, as its own), or None to skip it
    (finished, with --skip-done). Raises Refused for a log of other arguments, or a finished one with no
    checkpoint to continue (it would be overwritten)."""
    elsewhere = "give another --name or --out-dir"
    resumable = os.path.exists(os.path.join(run.save_dir, settings.CHECKPOINT_NAME))
    if resumable and not args.skip_done:
        return run  # main_mlp.py continues it, or refuses a checkpoint of other arguments, touching nothing
    try:
        log = logparse.parse_log(run.files["log"])
    except logparse.LogParseError as exc:
        raise Refused(f"{run.label}: {exc}: not a log to continue or keep; {elsewhere}") from None
    phase = log.main_phase()
    done = phase is not None and phase.has_final()
    header_only = (not resumable and not log.skipped and not any(p.steps for p in log.phases)
                   and begins_as(run.files["log"], b"Arguments:\n")
                   and begins_as(run.files["metrics"], b'{"type": "config"', max_lines=1))
    diffs = differing_arguments(log.args, run.expected, partial=header_only)
    if diffs:
        raise Refused(f"{run.label}: {run.files['log']} is {'a finished run' if done else 'a run'} with "
                      f"{differences_text(diffs)}; {elsewhere} (nothing was run)")
    if done and args.skip_done:
        return None
    if done and not resumable:
        raise Refused(f"{run.label}: {run.files['log']} has finished and {run.save_dir} holds no checkpoint to "
                      f"continue: it would be run again and its log overwritten; add --skip-done to keep it, "
                      f"or {elsewhere} (nothing was run)")
    return run


def plan_runs(args, runs):
    """``(runs to start, finished runs skipped)``, every run with a log checked by ``plan_run`` before any
    starts."""
    planned = [plan_run(args, run) if os.path.isfile(run.files["log"]) and os.path.getsize(run.files["log"])
               else run for run in runs]
    return [p for p in planned if p is not None], [r for r, p in zip(runs, planned) if p is None]


# --------------------------------------------------------------------------
# Running here


def lock_holder(save_dir):
    """The pid (as its lock file says) of the run that holds ``save_dir``'s lock, or None."""
    try:
        handle = open(os.path.join(save_dir, settings.LOCK_NAME), encoding="utf-8")
    except OSError:
        return None
    with handle:  # closing it lets go of a lock taken here
        return None if try_lock(handle) else handle.read().strip() or "unknown"


def last_line(path):
    """The last non-blank line of a text file (a failed run's error message), or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return ([line.strip() for line in handle if line.strip()] or [""])[-1]
    except OSError:
        return ""


def settle_failure(run, how):
    """Report a run that ended with an error (``how``, in words); True when it failed.

    Its log decides, as in the summary: final scores written with the run's own arguments are a finished
    run (whatever came after them). Another process holding its --save-dir (a run of an earlier start of
    this sweep, or of another sweep) is waited for first; its log counts only if its arguments are ours.
    """
    holder = lock_holder(run.save_dir)
    if holder is not None:
        say(f"{run.label}: its run ended ({how}); another (pid {holder}) holds {run.save_dir}: waiting for it")
        while lock_holder(run.save_dir) is not None:
            time.sleep(RUN_POLL_S)
    try:
        log = logparse.parse_log(run.files["log"])
        finished = log.main_phase() is not None and log.main_phase().has_final()
        diffs = differing_arguments(log.args, run.expected)
    except logparse.LogParseError:
        finished, diffs = False, []
    if finished and not diffs:
        say(f"{run.label}: done: its log has its final scores (after them: {how})")
        return False
    why = f"its log is of another run: {differences_text(diffs)}" if finished else last_line(run.files["err"])
    say(f"{run.label}: FAILED ({how}){': ' + why if why else ''} (see {run.files['err']})")
    return True


def _run_here(task, run, threads):
    """One task in a worker thread of ``run_all``; returns its minutes."""
    t0 = time.perf_counter()
    if task.stopped is None:
        say(f"{run.label}: started ({threads} threads), log {run.files['log']}")
    task()
    return (time.perf_counter() - t0) / 60


def run_all(args, pending):
    """Run ``pending`` here, ``--jobs`` at a time: the tasks a cluster runs, in a thread pool.

    A stop signal is passed on to the running runs (which checkpoint and stop); the ones not started
    do not start. Returns ``(failed runs, the signal or None)``.
    """
    tasks, stopped, failed = [run_task(args, run) for run in pending], [], []

    def stop(signum, frame):  # the first signal is passed on; the runs checkpoint and stop
        if not stopped:
            stopped.append(signum)
            for task in tasks:
                task.stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(_run_here, task, run, args.threads): (run, task)
                       for run, task in zip(pending, tasks)}
            for future in as_completed(futures):
                run, task = futures[future]
                try:
                    say(f"{run.label}: done in {future.result():.1f} min")
                except Exception as exc:  # the run failed, did not start, or was stopped
                    if stopped:
                        say(f"{run.label}: stopped ({exit_text(task.returncode)})")
                    elif task.returncode is None:  # it did not start
                        say(f"{run.label}: FAILED: {exc} (see {run.files['err']})")
                        failed.append(run)
                    elif settle_failure(run, exit_text(task.returncode)):
                        failed.append(run)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return failed, (stopped or [None])[0]


# --------------------------------------------------------------------------
# SLURM, through submitit


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


def submit(args, pending, executor):
    """Submit ``pending`` as ONE job array of ``executor`` (submitit); returns the jobs."""
    # The job process imports sweep_task by name: make this directory importable there
    # (submitit starts it with this process's environment, locally and through sbatch).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    # A process started here inherits SIGUSR2 blocked: one sent while its task starts, before submitit
    # has set up its handler, then waits for the task (RunTask lets it through) and requeues it.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        with executor.batch():
            return [executor.submit(run_task(args, run)) for run in pending]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def submit_array(args, pending):
    jobs = submit(args, pending, submitit_executor(args)) if pending else []
    if not jobs:
        say("nothing to submit: every run has finished")
        return EXIT_OK
    say(f"submitted job array {jobs[0].job_id.split('_')[0]}: {len(jobs)} tasks; logs in {args.out_dir}, "
        f"submitit's files in {os.path.join(args.out_dir, 'submitit')}")
    say(f"when they are done: python {PROG} --summarize-only --out-dir {args.out_dir} "
        f"--names {' '.join(shlex.quote(n) for n, _ in args.configs)}")
    return EXIT_OK


def refuse(message):
    """The sweep's one-line error; returns its exit status."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_BAD_INPUT


def main(argv=None):
    """Run, submit, print or summarise as the flags say; returns the exit status."""
    reopen_closed_streams()
    args = parse_args(argv)
    if args.summarize_only:
        return summarize(args)
    try:
        runs = build_runs(args)
        if args.print_jobs:
            for run in runs:
                say(job_line(args, run))
            return EXIT_OK
        pending, skipped = plan_runs(args, runs)
    except Refused as exc:
        return refuse(str(exc))
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:
        return refuse(f"argument --out-dir: cannot make {args.out_dir} ({exc.strerror or exc})")
    for run in skipped:
        say(f"{run.label}: already finished, skipped")
    if args.executor == "slurm":
        return submit_array(args, pending)
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
