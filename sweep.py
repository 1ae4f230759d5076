"""Run main_mlp.py configurations over several seeds, here or on a SLURM cluster, and summarise them.

    python sweep.py --seeds 0 1 2 --jobs 2 --out-dir runs/sweep --name bimodal -- \\
        --n 10 --batch-size 1000 --space extended_sphere --c-p 0 --p 0 --only-unsupervised \\
        --gt-lambda-1 5 --gt-lambda-2 25 --n-steps 10000
    python sweep.py --executor slurm --partition gpu --gpus 1 --time 240 --seeds 0 1 2 \\
        --grid loss=aninfonce,infonce --out-dir runs/grid --name bimodal -- <main_mlp.py arguments>

Everything after ``--`` goes to main_mlp.py unchanged, except that each run
gets ``--seed S --log-file DIR/NAME_seedS.log --metrics-file
DIR/NAME_seedS.jsonl`` (so those three flags may not be given), a
``--save-dir`` of its own (``D/NAME_seedS`` under a given ``--save-dir D``,
spelled out, not abbreviated; else ``DIR/checkpoints/NAME_seedS``),
``--resume-if-exists`` (a run started again continues from its checkpoint)
and ``--checkpoint-minutes`` (default 10) unless a checkpoint cadence is
given. Its stdout and stderr are appended to ``DIR/NAME_seedS.out`` and ``.err``.

``--grid KEY=V1,V2`` (repeatable) makes one configuration per combination of
values, named ``NAME_KEY-V1...``; ``on``/``off`` are a switch given or not.
KEY is a flag of main_mlp.py by its full name (``batch-size``) or its dest
name (``batch_size``), not an abbreviation, and not one given after ``--``
too. The flags are read from main_mlp.py's own parser, in a child process
with ``--python`` (it imports torch: a few seconds, only with a grid or with
logs already in DIR).

A configuration name (``--name``) is a file name without ``*?[]``: the
runs' files are found again by it, as a shell glob.

Executors (``--executor``):

- ``local`` (default): at most ``--jobs`` runs at a time as subprocesses of
  this machine, each with ``--threads`` threads (OMP_NUM_THREADS and
  MKL_NUM_THREADS; default: the CPU count divided by ``--jobs``), then the
  summary. SIGINT/SIGTERM are passed on to the runs, which checkpoint and stop.
- ``submitit-local``: the tasks a cluster would run, through submitit's
  LocalExecutor on this machine (all at once, ``--time`` minutes each), then
  the summary.
- ``slurm``: ONE job array of every configuration × seed through submitit
  (``--partition``, ``--time``, ``--gpus``, ``--cpus``, ``--mem-gb``,
  ``--array-parallelism``, ``--account``, ``--qos``, ``--setup``); prints the
  job id and returns. SLURM sends SIGUSR2 before the time limit (and on
  preemption): the task passes it to its run, which finishes its step,
  checkpoints and exits, and submitit requeues the task, which resumes.
- ``print``: one shell command line per run (stdout and stderr redirected)
  and nothing run: for an array script of your own.

``--skip-done`` leaves out the runs whose log has its final scores, so
submitting a sweep again runs only what is unfinished; only when the log's
Arguments are those the run would be given now (apart from its own files),
else the sweep refuses (exit 2) and names the run and the argument. A run
whose log is already there is started again only to continue from its
checkpoint: a log of other arguments, or a finished one, with no checkpoint
to continue is refused rather than overwritten. Nothing starts when one run
is refused.

``--summarize-only`` makes the summary of the logs already in DIR, for
``--name`` or every name matching the ``--names`` patterns (shell globs such
as ``'bimodal_*'``), in one table. The summary, ``DIR/NAME_summary.md`` and
``.csv`` (``NAME_grid_summary`` for a grid, ``sweep_summary`` for several
names, or ``--summary-name``), has one row per configuration: the seeds (and
how many finished), the steps, and mean ± standard deviation over the
finished seeds (sample std, ddof = 1; "-" for one seed) of

- Lin. and Perm.: a run's final ``linear mean`` / ``perm mean`` (when no run
  of a configuration finished, their last logged Lin. / Perm.);
- Λ̂ error: the mean over entries of |Λ̂ - λ| / λ after sorting both (the
  encoder's outputs are a permutation of the latents), with the last logged Λ̂.

The Markdown also lists every run, unfinished ones marked. With
``--reference NAME=LOG`` (e.g. a published log) it adds a section that sets
configuration NAME's runs beside that log at the last step all of them
logged: <Loss>, Lin., Perm. and Λ̂ error, ours as mean ± std [min, max] over
seeds, the reference's value beside it.

No file the summary reads (a log, a metrics file, a ``--reference``) is
written over by it.

Exit status: 0 done (or submitted); 1 a run failed; 2 bad arguments, or logs
that cannot be read or found, or runs refused (above); 128 + the signal
number when stopped by SIGINT/SIGTERM.
"""


import argparse
import dataclasses
import fcntl
import importlib.util
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import logparse
import settings
from sweep_summary import GLOB_CHARACTERS, say, summarize
from argparse_utils import EXIT_BAD_INPUT, ArgumentParser, positive_int

PROG = "sweep.py"
EXIT_OK, EXIT_RUN_FAILED = 0, 1
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCRIPT = os.path.join(HERE, "main_mlp.py")
# The flags this script sets for each run; main_mlp.py must not get them twice.
OWN_FLAGS = ("--seed", "--log-file", "--metrics-file")
# Shortest prefix argparse could expand to one of OWN_FLAGS ("--se" is already
# only --seed); shorter strings are not treated as those flags.
MIN_PREFIX = 4
EXECUTORS = ("local", "submitit-local", "slurm", "print")
DEFAULT_CHECKPOINT_MINUTES = 10.0
# SLURM sends SIGUSR2 this long before the time limit (at most a quarter of the limit):
# time to finish a step and write a checkpoint.
SIGNAL_DELAY_S = 120
# Requeues after a time limit before a task gives up (preemptions do not count).
MAX_TIMEOUTS = 50
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# How often to look whether a run that outlived its task has ended.
RUN_POLL_S = 1.0
# How submitit's traceback of a task names the run's own failure (sweep_task.RunFailed).
RUN_FAILED = re.compile(r"^(?:sweep_task\.)?RunFailed: (.*)$", re.MULTILINE)
# The Arguments of a run's log that are its own, not its configuration's: the files each run gets,
# and resume_training, which main_mlp.py sets from whether a checkpoint was there.
PER_RUN_ARGS = ("log_file", "metrics_file", "save_dir", "resume_training")
# Reading the training script's command line imports what it imports (torch): seconds, not minutes.
PROBE_TIMEOUT_S = 300


def _seed(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def build_parser():
    """The command line: one add_argument per flag (so this is long)."""
    parser = ArgumentParser(prog=PROG, usage=f"{PROG} [options] -- MAIN_MLP_ARGS ...",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=_seed, nargs="+", default=None, metavar="S",
                        help="the seeds to run (one run each)")
    parser.add_argument("--jobs", type=positive_int, default=1,
                        help="runs at a time on this machine (default: %(default)s)")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="where the logs, metrics files, stdout/stderr files and the summary go")
    parser.add_argument("--name", default="run",
                        help="configuration name: runs write DIR/NAME_seedS.log (no '/' and none of *?[] in it; "
                             "default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads per run (default: CPU count // --jobs, at least 1)")
    parser.add_argument("--python", default=sys.executable,
                        help="the Python interpreter of the runs (default: this one)")
    parser.add_argument("--script", default=DEFAULT_SCRIPT,
                        help="the training script (default: main_mlp.py beside this file)")
    parser.add_argument("--skip-done", action="store_true",
                        help="do not rerun a seed whose log already has its final scores (a log of other arguments "
                             "is refused)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: subprocesses here, --jobs at a time; submitit-local: the same tasks as on a "
                             "cluster, through submitit on this machine; slurm: one SLURM job array through "
                             "submitit, then return; print: the command lines, run nothing (default: local)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a main_mlp.py flag by its full name (without --) or dest name, and its values, one "
                             "configuration each; on/off for switches; repeatable: every combination runs, each "
                             "over --seeds")
    parser.add_argument("--checkpoint-minutes", type=float, default=DEFAULT_CHECKPOINT_MINUTES,
                        help="checkpoint cadence of the runs (main_mlp.py --checkpoint-minutes; default "
                             "%(default)s), unless the main_mlp.py arguments set one")
    slurm = parser.add_argument_group("SLURM (--executor slurm; passed to submitit)")
    slurm.add_argument("--partition", default=None, help="partition")
    slurm.add_argument("--time", type=float, default=60.0,
                       help="time limit per task, minutes (default 60; also the limit of submitit-local tasks); "
                            "a task that hits it checkpoints and is requeued")
    slurm.add_argument("--gpus", type=int, default=0, help="GPUs per task (default 0)")
    slurm.add_argument("--cpus", type=positive_int, default=None, help="CPUs per task (default: --threads or 1)")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per task, GB")
    slurm.add_argument("--array-parallelism", type=positive_int, default=None,
                       help="tasks of the array running at once (the %%P of the array; default: all)")
    slurm.add_argument("--account", default=None, help="account to charge")
    slurm.add_argument("--qos", default=None, help="quality of service")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each task, e.g. 'module load cuda' (repeatable)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="run nothing; summarise the logs already in --out-dir")
    parser.add_argument("--names", nargs="+", default=None, metavar="PATTERN",
                        help="with --summarize-only: the configuration names (or shell globs) to put in one "
                             "table (default: --name)")
    parser.add_argument("--group-steps", type=positive_int, nargs="+", default=[], metavar="STEP",
                        help="with --summarize-only: also give the R² by ground-truth λ group at these logged steps")
    parser.add_argument("--summary-name", default=None,
                        help="base name of the summary files in --out-dir (default: NAME_summary, or "
                             "sweep_summary for several names)")
    parser.add_argument("--reference", action="append", default=[], metavar="NAME=LOG",
                        help="set the runs of configuration NAME beside a reference log (e.g. a published "
                             "one) at the last step all of them logged: the summary gets a section with "
                             "their <Loss>, Lin., Perm. and Λ̂ error there (repeatable)")
    parser.add_argument("--note", default=None,
                        help="a sentence to put under the summary's title (how and where the runs were made)")
    return parser


def split_argv(argv):
    """``(sweep's own arguments, main_mlp.py's arguments)``, split at the first ``--``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def flag_name(token):
    """The flag of one of OWN_FLAGS that ``token`` would set in main_mlp.py, or None."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0]
    for flag in OWN_FLAGS:
        if name == flag or (len(name) >= MIN_PREFIX and flag.startswith(name)):
            return flag
    return None


def parse_args(argv=None):
    """Parse and validate; ``args.train_args`` holds the arguments after ``--`` for main_mlp.py."""
    parser = build_parser()
    own, train_args = split_argv(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(own)
    args.train_args = train_args
    args.references = {}
    for item in args.reference:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"argument --reference: expected NAME=LOG, got {item!r}")
        args.references[name] = path
    problem = name_problem(args.name)
    if problem:
        parser.error(f"argument --name: {problem}, got {args.name!r}")
    if args.summary_name is not None and (not args.summary_name or "/" in args.summary_name
                                          or os.sep in args.summary_name):
        parser.error(f"argument --summary-name: a file name without a path separator, got {args.summary_name!r}")
    args.print_jobs = args.executor == "print"
    if not args.print_jobs:  # the summary is written there, and with a run the logs
        problem = out_dir_problem(args.out_dir, create=not args.summarize_only)
        if problem:
            parser.error(f"argument --out-dir: {problem}")
    try:
        args.grid_items = parse_grid(args.grid)
        args.configs = configurations(args.name, args.grid_items)
    except ValueError as exc:
        parser.error(f"argument --grid: {exc}")
    if args.summarize_only:
        if train_args:
            parser.error("--summarize-only runs nothing: drop the main_mlp.py arguments after '--'")
        return args
    if args.names is not None:
        parser.error("argument --names: only with --summarize-only")
    if not args.seeds:
        parser.error("argument --seeds: required to run or print jobs")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"argument --seeds: a seed is repeated: {args.seeds}")
    for token in train_args:
        flag = flag_name(token)
        if flag is not None:
            parser.error(f"main_mlp.py argument {token}: {PROG} sets {flag} for each run itself")
        name = token.split("=", 1)[0]
        if name != "--save-dir" and len(name) >= MIN_PREFIX and "--save-dir".startswith(name):
            # argparse would expand it, and every seed would share one directory.
            parser.error(f"main_mlp.py argument {token}: spell out --save-dir, which {PROG} gives each "
                         f"seed a directory of its own")
    if not os.path.isfile(args.script):
        parser.error(f"argument --script: no file {args.script}")
    if args.threads is None and args.executor in ("local", "submitit-local"):
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if not (args.time > 0 and math.isfinite(args.time)):
        parser.error(f"argument --time: must be a positive number of minutes, got {args.time}")
    if not (args.checkpoint_minutes > 0 and math.isfinite(args.checkpoint_minutes)):
        parser.error(f"argument --checkpoint-minutes: must be a positive number, got {args.checkpoint_minutes}")
    if args.executor in ("submitit-local", "slurm"):
        if importlib.util.find_spec("submitit") is None:  # only these executors need it
            parser.error(f"argument --executor: {args.executor} needs submitit "
                         f"(pip install -r requirements-cluster.txt)")
    return args


def name_problem(name):
    """What makes ``name`` unusable as a configuration name, or None.

    A run's files are NAME_seedS.log and so on, found again by NAME as a shell glob
    (``--names``): a name with a path separator, a glob character or nothing in it
    would name files elsewhere or not be found again.
    """
    if not name:
        return "must not be empty"
    if "/" in name or os.sep in name:
        return "no path separator allowed"
    if any(ch in name for ch in GLOB_CHARACTERS):
        return f"none of {' '.join(GLOB_CHARACTERS)} allowed (--names reads them as a shell glob)"
    return None


def out_dir_problem(path, create=True):
    """Why ``path`` cannot hold a sweep's files (an existing file, an unwritable directory, or with
    ``create`` a directory that cannot be made), or None."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} is a file, not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    if not create:
        return None  # reading it says it is missing
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot make {path}: {parent} is a file"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot make {path}: {parent} is not writable"
    return None


def parse_grid(grid):
    """``[(key, [values])]`` of the ``--grid KEY=V1,V2`` items (KEY without its dashes).

    Raises:
        ValueError: an item that is not KEY=V1,V2,..., a key given twice, or a value repeated.
    """
    items = []
    for item in grid:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        values = [v.strip() for v in values.split(",")]
        if not sep or not key or not all(values):
            raise ValueError(f"expected KEY=V1,V2,..., got {item!r}")
        if key in (k for k, _ in items):
            raise ValueError(f"{key} is given twice; give its values in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ValueError(f"a value of {key} is repeated: {item!r}")
        items.append((key, values))
    return items


def configurations(base, items, flags=None):
    """``[(name, extra main_mlp.py arguments)]``: every combination of the ``--grid`` values.

    ``KEY=V1,V2`` gives ``FLAG V1`` and ``FLAG V2``; the values ``on`` and ``off``
    give the switch ``FLAG`` and nothing. FLAG is ``flags[KEY]`` (from
    :func:`grid_flags`), else ``--KEY``. Each name is ``base`` followed by
    ``_KEY-VALUE`` per grid key.
    """
    configs = [(base, [])]
    for key, values in items:
        flag = (flags or {}).get(key, f"--{key}")
        expanded = []
        for name, extra in configs:
            for value in values:
                given = [flag] if value == "on" else [] if value == "off" else [flag, value]
                label = re.sub(r"[^A-Za-z0-9.+-]", "-", value)
                expanded.append((f"{name}_{key}-{label}", extra + given))
        configs = expanded
    names = [name for name, _ in configs]
    if len(set(names)) != len(names):
        raise ValueError("two configurations get the same name; give distinct values")
    return configs


def expanded_flag(token, flags):
    """The flag of ``flags`` that argparse would read ``token`` as (its full name, or a prefix of
    exactly one flag), or None."""
    if not token.startswith("--"):
        return None
    name = token.split("=", 1)[0]
    if name in flags:
        return name
    candidates = [flag for flag in flags if flag.startswith(name)]
    return candidates[0] if len(candidates) == 1 else None


def grid_flags(items, command_line, train_args):
    """``{key: flag}``: the training script's flag of each grid key.

    A key is a flag's full name without its dashes (``batch-size``) or its dest
    name (``batch_size``); an abbreviation is not taken, since argparse would
    expand it behind our back (``see`` would be ``--seed``: runs alike under
    different names).

    Raises:
        ValueError: a key that is no flag, a flag sweep.py sets itself, on/off for a flag that
            takes a value (or a value for a switch), or a flag also given after ``--``.
    """
    flags = {}
    for key, values in items:
        flag = next((f for f in (f"--{key}", f"--{key.replace('_', '-')}") if f in command_line.flags), None)
        if flag is None:
            close = [f for f in command_line.flags if f.startswith(f"--{key}")]
            hint = f" (did you mean {' or '.join(close)}? give the full name)" if close else ""
            raise ValueError(f"{key} is not a flag of {command_line.script}{hint}")
        if flag in OWN_FLAGS:
            raise ValueError(f"{flag} is set for each run by {PROG}")
        switch = not command_line.flags[flag][1]
        if switch and not set(values) <= {"on", "off"}:
            raise ValueError(f"{flag} is a switch: its values are on and off, got {','.join(values)}")
        if not switch and set(values) & {"on", "off"}:
            raise ValueError(f"{flag} takes a value; on and off are for switches")
        for token in train_args:
            if expanded_flag(token, command_line.flags) == flag:
                raise ValueError(f"{flag} is also given after '--' ({token}); give it in one place")
        flags[key] = flag
    return flags


# --------------------------------------------------------------------------
# The training script's command line, read by its own parser


@dataclasses.dataclass
class ScriptCommandLine:
    """What the training script's parser says (``sweep_task.probe_command_line``).

    script: the script's file name, for messages.
    flags: ``{flag: (dest, takes a value)}``, every flag of the script.
    parsed: per argument list asked about, ``{dest: value}`` as the log's Arguments block
        prints it, or ``{"error": the script's one-line refusal}``.
    """

    script: str
    flags: dict
    parsed: list


class ScriptError(Exception):
    """The training script's command line cannot be read (the message says why)."""


def read_command_line(python, script, argvs):
    """Ask the training script's own parser for its flags and for what it makes of ``argvs``.

    In a child process with the runs' interpreter (``python``), so that torch is imported there,
    not here: the script runs up to its first parse of a command line (its imports: seconds).
    Returns a :class:`ScriptCommandLine`.
    Raises:
        ScriptError: the child cannot run, or the script does not get as far as parsing.
    """
    code = f"import sys; sys.path[0] = {HERE!r}; import sweep_task; sweep_task.probe_command_line()"
    try:
        proc = subprocess.run([python, "-c", code], input=json.dumps({"script": script, "argvs": argvs}),
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScriptError(f"{script} with {python}: cannot run it ({exc})") from None
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0:
        raise ScriptError(f"{script} with {python}: {lines[-1] if lines else f'exit status {proc.returncode}'}")
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        raise ScriptError(f"{script} with {python}: no answer from its parser") from None
    return ScriptCommandLine(os.path.basename(script), {flag: tuple(v) for flag, v in answer["flags"].items()},
                             answer["parsed"])


def check_with_script(args):
    """What only the training script knows: its flags for ``--grid`` (sets ``args.configs``) and the
    Arguments block of each run whose log is already there.

    Asks the script (``read_command_line``) only when there is a grid or such a log: once, and a
    second time only when a grid key was a dest name (``batch_size``) and a log is there.
    Returns ``{(name, seed): Arguments it would be given}`` for the runs with a log.
    Raises:
        ScriptError: see ``read_command_line``; ValueError: a bad grid key (``grid_flags``).
    """
    runs = runs_with_logs(args)
    if not args.grid_items and not runs:
        return {}
    command_line = ask_script(args, runs)
    if args.grid_items:
        configs = configurations(args.name, args.grid_items, grid_flags(args.grid_items, command_line,
                                                                        args.train_args))
        if configs != args.configs:
            args.configs = configs
            runs = runs_with_logs(args)
            if runs:
                command_line = ask_script(args, runs)
    return {(name, seed): now for (name, _, seed), now in zip(runs, command_line.parsed)}


def runs_with_logs(args):
    """The runs (name, extra, seed) whose log is there already (none for --executor print: it runs nothing)."""
    if args.print_jobs:
        return []
    return [(name, extra, seed) for name, extra, seed in all_runs(args) if has_log(args, name, seed)]


def ask_script(args, runs):
    """``read_command_line`` for the argument lists of ``runs``."""
    argvs = [command(args, name, extra, seed)[2:] for name, extra, seed in runs]
    return read_command_line(args.python, args.script, argvs)


# --------------------------------------------------------------------------
# Running


def run_paths(out_dir, name, seed):
    """The files of one run: log, metrics, stdout, stderr."""
    stem = os.path.join(out_dir, f"{name}_seed{seed}")
    return {"log": stem + ".log", "metrics": stem + ".jsonl", "out": stem + ".out", "err": stem + ".err"}


def with_save_dir(train_args, name, seed, out_dir):
    """``(train_args with a --save-dir of the run's own, that directory)``: the given one's
    subdirectory NAME_seedS, or ``out_dir/checkpoints/NAME_seedS`` when none is given (every run
    under a sweep can be resumed)."""
    result, i, save_dir = [], 0, None
    while i < len(train_args):
        token = train_args[i]
        if token == "--save-dir" and i + 1 < len(train_args):
            save_dir = os.path.join(train_args[i + 1], f"{name}_seed{seed}")
            result += [token, save_dir]
            i += 2
            continue
        if token.startswith("--save-dir="):
            save_dir = os.path.join(token.split("=", 1)[1], f"{name}_seed{seed}")
            token = "--save-dir=" + save_dir
        result.append(token)
        i += 1
    if save_dir is None:
        save_dir = os.path.join(out_dir, "checkpoints", f"{name}_seed{seed}")
        result += ["--save-dir", save_dir]
    return result, save_dir


def all_runs(args):
    """``[(name, extra arguments, seed)]``: every configuration of the grid over every seed."""
    return [(name, extra, seed) for name, extra in args.configs for seed in args.seeds]


def command(args, name, extra, seed):
    """The argv of one run: resumable (its own --save-dir, --resume-if-exists), its own files."""
    paths = run_paths(args.out_dir, name, seed)
    train_args, _ = with_save_dir(args.train_args + extra, name, seed, args.out_dir)
    if not any(t.startswith(("--checkpoint-minutes", "--checkpoint-every")) for t in train_args):
        train_args += ["--checkpoint-minutes", f"{args.checkpoint_minutes:g}"]
    return ([args.python, args.script] + train_args
            + ["--resume-if-exists", "--seed", str(seed), "--log-file", paths["log"],
               "--metrics-file", paths["metrics"]])


def job_line(args, name, extra, seed):
    """One shell line: the run with its stdout/stderr redirected to its files."""
    paths = run_paths(args.out_dir, name, seed)
    env = "".join(f"{var}={args.threads} " for var in THREAD_VARIABLES) if args.threads else ""
    return (f"{env}{shlex.join(command(args, name, extra, seed))} "
            f"> {shlex.quote(paths['out'])} 2> {shlex.quote(paths['err'])}")


def log_finished(path):
    """True when the log at ``path`` parses and its main phase has its final scores."""
    try:
        phase = logparse.parse_log(path).main_phase()
    except logparse.LogParseError:
        return False
    return phase is not None and phase.has_final()


def lock_holder(save_dir):
    """The pid (as its lock file says) of the run that holds ``save_dir``, or None.

    main_mlp.py holds an flock on DIR/.lock while it runs; the lock is free once the run
    has ended, however it ended.
    """
    try:
        handle = open(os.path.join(save_dir, settings.LOCK_NAME), encoding="utf-8")
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return handle.read().strip() or "unknown"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def settle_failure(args, name, extra, seed, how):
    """Report a run whose task failed (``how``: in words) as its log says it ended; True when it failed.

    Its log decides, as in the summary and for --skip-done: with its final scores the run
    finished (whatever happened to its task after them). A run still going after its task
    died (it holds its save directory) is waited for first.
    """
    label, paths = f"{name} seed {seed}", run_paths(args.out_dir, name, seed)
    _, save_dir = with_save_dir(args.train_args + extra, name, seed, args.out_dir)
    holder = lock_holder(save_dir)
    if holder is not None:
        say(f"{label}: its task ended ({how}) but its run goes on (pid {holder}): waiting for it")
        while lock_holder(save_dir) is not None:
            time.sleep(RUN_POLL_S)
    if log_finished(paths["log"]):
        say(f"{label}: done: its log has its final scores (after them: {how})")
        return False
    message = last_line(paths["err"])
    say(f"{label}: FAILED ({how}){': ' + message if message else ''} (see {paths['err']})")
    return True


def task_failure(exc):
    """How a submitit task failed, in words: its run's end (``sweep_task.RunFailed``) when the task
    said it (submitit hands over the task's traceback as text), else that the task itself died."""
    found = RUN_FAILED.findall(str(exc))
    return found[-1].strip() if found else "its task died without a result"


class Signals:
    """Remembers SIGINT/SIGTERM and passes it on (``forward(signum)``) so the runs checkpoint and stop."""

    def __init__(self, forward):
        self.signum = None
        self.forward = forward
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            self.forward(signum)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def last_line(path):
    """The last non-blank line of a text file (a failed run's error message), or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class Refused(Exception):
    """A sweep that must not start (a finished log would be lost, or skipped for another configuration)."""


def has_log(args, name, seed):
    """Whether the run's log exists with something in it."""
    path = run_paths(args.out_dir, name, seed)["log"]
    return os.path.isfile(path) and os.path.getsize(path) > 0


def differing_arguments(logged, now):
    """``[(name, value in the log, value now)]``: the Arguments that differ, apart from PER_RUN_ARGS."""
    missing = "(none)"
    keys = [k for k in list(logged) + [k for k in now if k not in logged] if k not in PER_RUN_ARGS]
    return [(k, logged.get(k, missing), now.get(k, missing)) for k in keys if logged.get(k) != now.get(k)]


def plan_run(args, name, extra, seed, now):
    """Whether to start a run whose log is already there: True to start it, False to skip it (finished,
    with --skip-done).

    ``now``: the Arguments block it would be given (``ScriptCommandLine.parsed``).
    Raises:
        Refused: its log would be skipped although it is of other arguments, or overwritten (no
            checkpoint to continue from) although it is of other arguments or has finished.
    """
    log_path = run_paths(args.out_dir, name, seed)["log"]
    label = f"{name} seed {seed}"
    elsewhere = "give another --name or --out-dir"
    if "error" in now:
        raise Refused(f"{label}: {os.path.basename(args.script)} refuses its arguments: {now['error']}")
    _, save_dir = with_save_dir(args.train_args + extra, name, seed, args.out_dir)
    resumable = os.path.exists(os.path.join(save_dir, settings.CHECKPOINT_NAME))
    if resumable and not args.skip_done:
        # main_mlp.py continues it (a longer --n-steps extends it), or refuses a checkpoint of other
        # arguments or a log that is not the checkpoint's, touching nothing.
        return True
    try:
        log = logparse.parse_log(log_path)
    except logparse.LogParseError as exc:
        raise Refused(f"{label}: {exc}: not a log to continue or keep; {elsewhere}") from None
    phase = log.main_phase()
    done = phase is not None and phase.has_final()
    diffs = differing_arguments(log.args, now)
    if diffs:
        key, then, later = diffs[0]
        more = f" (and {len(diffs) - 1} more argument{'s' if len(diffs) > 2 else ''})" if len(diffs) > 1 else ""
        raise Refused(f"{label}: {log_path} is {'a finished run' if done else 'a run'} with {key} {then}, this "
                      f"sweep gives {key} {later}{more}; {elsewhere} (nothing was run)")
    if done and args.skip_done:
        return False
    if done and not resumable:
        raise Refused(f"{label}: {log_path} has finished and {save_dir} holds no checkpoint to continue: "
                      f"it would be run again and its log overwritten; add --skip-done to keep it, or "
                      f"{elsewhere} (nothing was run)")
    return True


def pending_runs(args, logged_now):
    """``(runs to start, (name, seed) of the finished runs skipped)``: every run without a log yet,
    and of those with one, what ``plan_run`` says.

    ``logged_now``: ``{(name, seed): Arguments it would be given}`` for each run with a log.
    Raises:
        Refused: see ``plan_run``; checked for every run before any starts.
    """
    pending, skipped = [], []
    for name, extra, seed in all_runs(args):
        now = logged_now.get((name, seed))
        if now is None or plan_run(args, name, extra, seed, now):
            pending.append((name, extra, seed))
        else:
            skipped.append((name, seed))
    return pending, skipped


def _run_here(task, label, threads, log):
    """Run one task in a worker thread of ``run_all``; returns its minutes."""
    t0 = time.perf_counter()
    if task.stopped is None:
        say(f"{label}: started ({threads} threads), log {log}")
    task()
    return (time.perf_counter() - t0) / 60


def run_all(args, pending):
    """Run ``pending`` on this machine, ``--jobs`` at a time: a thread pool of the same tasks a cluster runs.

    SIGINT/SIGTERM are passed on to the running runs (which checkpoint and stop);
    the ones not started yet do not start. Returns ``(failed runs, signal or None)``.
    """
    from sweep_task import RunTask, exit_text

    tasks, extras = {}, {}
    for name, extra, seed in pending:
        paths = run_paths(args.out_dir, name, seed)
        tasks[(name, seed)] = RunTask(command(args, name, extra, seed), paths["out"], paths["err"], args.threads)
        extras[(name, seed)] = extra
    signals = Signals(lambda signum: [task.stop(signum) for task in tasks.values()])
    failed = []
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(_run_here, task, f"{name} seed {seed}", args.threads,
                                   run_paths(args.out_dir, name, seed)["log"]): (name, seed)
                       for (name, seed), task in tasks.items()}
            for future in as_completed(futures):
                name, seed = futures[future]
                err = run_paths(args.out_dir, name, seed)["err"]
                try:
                    minutes = future.result()
                    say(f"{name} seed {seed}: done in {minutes:.1f} min")
                except Exception as exc:  # the run failed, did not start, or was stopped
                    rc = tasks[(name, seed)].returncode
                    if signals.signum is not None:
                        say(f"{name} seed {seed}: stopped ({exit_text(rc)})")
                        continue
                    if rc is None:  # it did not start
                        failed.append((name, seed))
                        say(f"{name} seed {seed}: FAILED: {exc} (see {err})")
                    elif settle_failure(args, name, extras[(name, seed)], seed, exit_text(rc)):
                        failed.append((name, seed))
    finally:
        signals.restore()
    return failed, signals.signum


def run_submitit_local(args, pending):
    """Run ``pending`` through submitit on this machine, all at once; returns the failed runs."""
    if not pending:
        return []
    # submitit's processes inherit SIGUSR2 blocked: one sent while a task starts, before submitit has
    # set up its handler, then waits for the task (sweep_task.RunTask lets it through) and requeues
    # it, instead of ending it.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        jobs = submit(args, pending)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    failed = []
    for job, (name, extra, seed) in zip(jobs, pending):
        try:
            job.result()
            say(f"{name} seed {seed}: done")
        except Exception as exc:  # the task's error, as submitit reports it
            if settle_failure(args, name, extra, seed, task_failure(exc)):
                failed.append((name, seed))
    return failed


def submitit_executor(args):
    """The submitit executor of ``--executor submitit-local`` / ``slurm``, its parameters set from the flags."""
    import submitit

    folder = os.path.join(args.out_dir, "submitit", "%j")
    delay = max(1, min(SIGNAL_DELAY_S, int(args.time * 60 / 4)))
    if args.executor == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(timeout_min=args.time, signal_delay_s=delay)
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
    params = dict(time=int(math.ceil(args.time)), signal_delay_s=delay, cpus_per_task=args.cpus or args.threads or 1,
                  ntasks_per_node=1, nodes=1, setup=list(args.setup), job_name=f"sweep_{args.name}")
    if args.gpus:
        params["gpus_per_node"] = args.gpus
    if args.partition:
        params["partition"] = args.partition
    if args.mem_gb:
        params["mem"] = f"{int(math.ceil(args.mem_gb))}GB"
    if args.array_parallelism:
        params["array_parallelism"] = args.array_parallelism
    if args.account:
        params["account"] = args.account
    if args.qos:
        params["qos"] = args.qos
    executor.update_parameters(**params)
    return executor


def submit(args, pending):
    """Submit ``pending`` as ONE job array through submitit; returns the jobs."""
    from sweep_task import RunTask

    # The job process imports sweep_task by name: make this directory importable there
    # (submitit starts it with this process's environment, locally and through sbatch).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p)
    executor = submitit_executor(args)
    tasks = []
    for name, extra, seed in pending:
        paths = run_paths(args.out_dir, name, seed)
        tasks.append(RunTask(command(args, name, extra, seed), paths["out"], paths["err"], args.threads))
    with executor.batch():
        jobs = [executor.submit(task) for task in tasks]
    return jobs


def summarize_configs(args):
    """The summary of every configuration of the grid, in one table."""
    args.names = [name for name, _ in args.configs]
    if args.summary_name is None and len(args.names) > 1:
        args.summary_name = f"{args.name}_grid_summary"
    return summarize(args)


def refuse(message):
    """The sweep's one-line error; returns its exit status."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_BAD_INPUT


def main(argv=None):
    """Run, submit, print or summarise as the flags say; returns the exit status."""
    args = parse_args(argv)
    if args.summarize_only:
        return summarize(args)
    try:
        logged_now = check_with_script(args)
    except ScriptError as exc:
        return refuse(f"argument --script: cannot read the command line of {exc}")
    except ValueError as exc:
        return refuse(f"argument --grid: {exc}")
    if args.print_jobs:
        for name, extra, seed in all_runs(args):
            say(job_line(args, name, extra, seed))
        return EXIT_OK
    try:
        pending, skipped = pending_runs(args, logged_now)
    except Refused as exc:
        return refuse(str(exc))
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as exc:
        return refuse(f"argument --out-dir: cannot make {args.out_dir} ({exc.strerror or exc})")
    for name, seed in skipped:
        say(f"{name} seed {seed}: already finished, skipped")
    if args.executor == "slurm":
        jobs = submit(args, pending) if pending else []
        if jobs:
            say(f"submitted job array {jobs[0].job_id.split('_')[0]}: {len(jobs)} tasks; logs in {args.out_dir}, "
                f"submitit's files in {os.path.join(args.out_dir, 'submitit')}")
            say(f"when they are done: python {PROG} --summarize-only --out-dir {args.out_dir} "
                f"--names {' '.join(shlex.quote(n) for n, _ in args.configs)}")
        else:
            say("nothing to submit: every run has finished")
        return EXIT_OK
    if args.executor == "submitit-local":
        failed, signum = run_submitit_local(args, pending), None
    else:
        failed, signum = run_all(args, list(pending))
    if signum is not None:
        say(f"stopped by {signal.Signals(signum).name}; summarise later with --summarize-only")
        return 128 + signum
    status = summarize_configs(args)
    if failed:
        say(f"{len(failed)} of {len(pending)} runs failed: " + ", ".join(f"{name} seed {seed}" for name, seed in failed))
        return EXIT_RUN_FAILED
    return status


if __name__ == "__main__":
    sys.exit(main())
