"""A stopped run loses nothing: SIGINT / SIGTERM / SIGKILL mid-run, then --resume-training.

One command (a tiny contrastive run with --save-dir, --log-file and
--metrics-file, all relative paths) runs four times at once in four
directories: to the end (the reference), and stopped by SIGINT, SIGTERM and
SIGKILL once its log holds two Step lines. Then the SIGINT and SIGKILL runs
are resumed with the same command plus --resume-training, and a copy of the
finished run is extended with a larger --n-steps. On the
CPU with a seed, a resumed run must print after its checkpoint step exactly
what the run that was never stopped printed, and leave the same log and
metrics files (but for the places they record: each directory's own).
"""

import json
import re
import shutil
import signal

import pytest

import main_mlp
from tools import logparse
from cli_util import TINY, finish, parse_log, placed, signal_after_steps, start_cli, step_lines
from plumbing.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # subprocess runs of the CLI

N_STEPS = 36  # 36 % 5 == 1: the last step is also a regular log step
EXTENDED = 46
CMD = [*TINY, "--device", "cpu", "--n", "4", "--batch-size", "64", "--n-steps", str(N_STEPS), "--n-log-steps", "5",
       "--seed", "5", "--save-dir", "ckpt", "--log-file", "run.log", "--metrics-file", "metrics.jsonl"]
RESUME = CMD + ["--resume-training"]
STOPPED = re.compile(r"^main_mlp\.py: stopped by (SIG\w+) after step (\d+) of the unsupervised run; "
                     r"checkpoint in /\S*/ckpt\. Resume with the same command plus --resume-training\.$", re.M)
RESUMED = re.compile(r"resumed the unsupervised run after step (\d+)")


def load_checkpoint(cwd):
    return read_checkpoint(str(cwd / "ckpt" / "checkpoint.pth"), main_mlp.CHECKPOINT_LAYOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (returncode, stdout, stderr, directory)} of all the runs of this module.

    Each run of the second round starts as soon as the run it continues has ended (on two cores the
    resumptions start up while the uninterrupted run finishes).
    """
    dirs = {name: tmp_path_factory.mktemp(name) for name in
            ("full", "sigint", "sigterm", "sigkill", "resume_sigint", "resume_sigkill", "extend")}
    extend = CMD[:CMD.index("--n-steps") + 1] + [str(EXTENDED)] + CMD[CMD.index("--n-steps") + 2:]
    # Each first-round run, and what continues it: (its name, its command) or None.
    after = {"sigint": ("resume_sigint", RESUME), "sigkill": ("resume_sigkill", RESUME), "sigterm": None,
             "full": ("extend", extend + ["--resume-training"])}
    procs = {name: start_cli(CMD, dirs[name]) for name in ("full", "sigint", "sigterm", "sigkill")}
    out = {}
    try:
        signal_after_steps([(procs[name], dirs[name] / "run.log", signum) for name, signum in
                            (("sigint", signal.SIGINT), ("sigterm", signal.SIGTERM), ("sigkill", signal.SIGKILL))], 2)
        for name, then in after.items():
            out[name] = (*finish(procs[name]), dirs[name])
            if then is not None:
                shutil.rmtree(dirs[then[0]])
                shutil.copytree(dirs[name], dirs[then[0]])  # keep the first run's files to inspect
                procs[then[0]] = start_cli(then[1], dirs[then[0]])
        for name in ("resume_sigint", "resume_sigkill", "extend"):
            out[name] = (*finish(procs[name]), dirs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


def test_uninterrupted_run(runs):
    rc, stdout, stderr, cwd = runs["full"]
    assert rc == 0, stderr
    assert (cwd / "run.log").read_text() == stdout
    steps = parse_log(stdout)["phases"][0]["steps"]
    assert [s["step"] for s in steps] == list(range(1, N_STEPS + 1, 5))
    assert load_checkpoint(cwd)["step"] == N_STEPS


@pytest.mark.parametrize("name, signum, code", [("sigint", "SIGINT", 130), ("sigterm", "SIGTERM", 143)])
def test_sigint_sigterm_stop_after_a_step_with_a_checkpoint(runs, name, signum, code):
    rc, stdout, stderr, cwd = runs[name]
    assert rc == code, stderr
    assert "Traceback" not in stderr
    m = STOPPED.search(stderr)  # says where it stopped and how to resume
    assert m and m.group(1) == signum, stderr
    step = int(m.group(2))
    assert 6 <= step < N_STEPS
    assert load_checkpoint(cwd)["step"] == step
    log = parse_log(stdout)
    assert log["final"] is None  # stopped: no final evaluation
    assert (cwd / "run.log").read_text() == stdout


def test_sigkill_leaves_a_parseable_log_and_a_loadable_checkpoint(runs):
    rc, stdout, stderr, cwd = runs["sigkill"]
    assert rc == -signal.SIGKILL
    text = (cwd / "run.log").read_text()
    assert text.endswith("\n")  # no half-written line
    steps = parse_log(text)["phases"][0]["steps"]
    assert len(steps) >= 2
    # the project's log reader (compare_logs.py, plot_logs.py) reads it whole
    read = logparse.parse_log(str(cwd / "run.log"))
    assert not read.truncated and not read.skipped
    assert [r["step"] for r in read.main_phase().steps] == [s["step"] for s in steps]
    state = load_checkpoint(cwd)
    assert 1 <= state["step"] < N_STEPS
    assert state["offsets"][0] <= len(text.encode())
    # the checkpoint is at or after the last log line it has seen
    logged = parse_log(text.encode()[:state["offsets"][0]].decode())["phases"][0]["steps"]
    assert logged and logged[-1]["step"] <= state["step"]


@pytest.mark.parametrize("stopped, resumed", [("sigint", "resume_sigint"), ("sigkill", "resume_sigkill")])
def test_resume_prints_what_the_uninterrupted_run_printed(runs, stopped, resumed):
    _, full_out, _, full_dir = runs["full"]
    rc, stdout, stderr, cwd = runs[resumed]
    assert rc == 0, stderr
    k = int(RESUMED.search(stderr).group(1))
    assert k == load_checkpoint(runs[stopped][3])["step"]

    after = [line for step, line in step_lines(full_out) if step > k]
    assert after  # the run was stopped before its last log line
    assert [line for _, line in step_lines(stdout)] == after
    assert stdout.splitlines()[-2:] == full_out.splitlines()[-2:]  # the final evaluation
    # The files continue from the checkpoint: the same as if never stopped (each records its own places:
    # the resumed run's are those of the run it continues, in the directory it was copied from).
    for name in ("run.log", "metrics.jsonl"):
        assert placed((cwd / name).read_text(), runs[stopped][3]) == placed((full_dir / name).read_text(), full_dir)


def test_extend_a_finished_run(runs):
    _, full_out, _, _ = runs["full"]
    rc, stdout, stderr, cwd = runs["extend"]
    assert rc == 0, stderr
    assert int(RESUMED.search(stderr).group(1)) == N_STEPS
    assert [s["step"] for s in parse_log(stdout)["phases"][0]["steps"]] == [41, 46]
    text = (cwd / "run.log").read_text()
    # The finished run's log without its final evaluation, its header saying the new length.
    before = [f"\tn_steps: {EXTENDED}" if line == f"\tn_steps: {N_STEPS}" else line
              for line in full_out.splitlines()[:-2]]
    assert text.splitlines()[:len(before)] == before
    config = json.loads((cwd / "metrics.jsonl").read_text().splitlines()[0])
    assert config["type"] == "config" and config["args"]["n_steps"] == EXTENDED
    steps = parse_log(text)["phases"][0]["steps"]
    assert [s["step"] for s in steps] == list(range(1, EXTENDED + 1, 5))
    assert load_checkpoint(cwd)["step"] == EXTENDED
