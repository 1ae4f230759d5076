"""Every reader of logs and metrics files, fed files that a tiny real run wrote and then mutated: numbers
replaced by huge, non-finite or mistyped values, brackets nested thousands deep, control characters,
lines cut, dropped or repeated. Each tool (called in-process, as ``python TOOL ARGS`` runs it) answers
either normally or with one line ``PROG: error: FILE[:LINE]: what`` and exit status 2; never a
traceback, nor a line on stderr that is not its own.
"""

import contextlib
import io
import json
import os
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_util import TINY_RUN, restore_signal_handlers, run_tool_main

# A tiny training in-process, then many in-process tool runs; a warning (numpy's overflow) is a line on stderr.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::RuntimeWarning")]

# A number as the files print it (JSON or the log's text), and what may replace one.
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|NaN|-?Infinity|nan|-?inf")
HUGE = ("9" * 5000, "1" * 401, "1e999", "-1e999")
HOSTILE = ("1e308", "-" + "9" * 25, "NaN", "Infinity", "-Infinity", "nan", "inf", "null", "true", '"x"', "[]", "{}",
           '["x"]', "-1", "0", "")
# The fields the tools read (a mutation picks one of these as often as any field of the record).
READ_FIELDS = ("type", "step", "phase", "loss", "mean_loss", "lin", "perm", "lambda", "lin_dims", "perm_dims",
               "lin_mean", "lin_std", "perm_mean", "perm_std", "block_orthogonal_r2", "block_linear_groups", "args", "n", "n_steps",
               "more_unsupervised", "space_type", "p", "c_p", "gt_lambda_1", "gt_lambda_2", "linearly_spaced_lambda")
# The lines of a log whose numbers the tools read (every line of a metrics file is such a line).
READ_LINES = re.compile(r"\{|Step:|learned lambda|linear mean|perm mean|ground truth")
# Each way of mutating a line, as often as it is listed.
MUTATIONS = ("number", "number", "number", "field", "field", "field", "nest", "insert", "drop", "repeat")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The log and metrics file (as lists of lines) of a tiny run of main_mlp.py: 3 steps, each logged."""
    import main_mlp

    where = tmp_path_factory.mktemp("real")
    argv = [*TINY_RUN, "--n-steps", "3", "--n-log-steps", "1", "--seed", "0",
            "--log-file", str(where / "run.log"), "--metrics-file", str(where / "run.jsonl")]
    with restore_signal_handlers(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        assert main_mlp.main(argv) in (0, None)
    return {kind: (where / f"run.{kind}").read_text(encoding="utf-8").splitlines(keepends=True)
            for kind in ("log", "jsonl")}


def _number(draw, line):
    """``line`` with one of its numbers (the first as often as any) replaced by a hostile token."""
    numbers = list(NUMBER.finditer(line))
    if not numbers:
        return line
    m = numbers[draw(st.just(0) | st.integers(0, len(numbers) - 1))]
    return line[:m.start()] + draw(st.sampled_from(HUGE) | st.sampled_from(HOSTILE)) + line[m.end():]


def _nest(draw, line):
    """``line`` with brackets opened (and maybe some closed) before one of its numbers, or anywhere."""
    starts = [m.start() for m in NUMBER.finditer(line)]
    at = draw((st.sampled_from(starts) if starts else st.nothing()) | st.integers(0, len(line) - 1))
    depth = draw(st.sampled_from((2, 17, 1000, 100_000)))
    return line[:at] + "[" * depth + line[at:at + 1] + "]" * draw(st.integers(0, depth)) + line[at + 1:]


def _insert(draw, line):
    """``line`` with any text, control characters too, put in anywhere."""
    at = draw(st.integers(0, len(line)))
    text = draw(st.sampled_from(("\x00", "\r", "\t", "\x1b[2J", "\u2028", "\ufeff", "\n"))
                | st.text(st.characters(codec="utf-8"), min_size=1, max_size=6))
    return line[:at] + text + line[at:]


def _field(draw, line):
    """A JSON record line with one field (of the record, or of its config's arguments) set to any JSON
    value; another line has one of its numbers replaced."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # an earlier mutation may have nested it deeper than json reads
        record = None
    if not isinstance(record, dict):
        return _number(draw, line)
    target = record["args"] if isinstance(record.get("args"), dict) and draw(st.booleans()) else record
    key = draw(st.sampled_from(READ_FIELDS) | st.sampled_from(sorted(target)))
    target[key] = draw(st.sampled_from((float("nan"), float("inf"), 10 ** 400, 1e308, -1e308)) | JSON_VALUES)
    return json.dumps(record) + "\n"


MUTATE = {"number": _number, "nest": _nest, "insert": _insert, "field": _field}


@st.composite
def mutated(draw, lines):
    """``lines`` (each with its newline) after one to three mutations, as bytes, maybe cut anywhere."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 3))):
        read = [i for i, line in enumerate(lines) if READ_LINES.match(line)]  # as often as any line
        k = draw((st.sampled_from(read) if read else st.nothing()) | st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(MUTATIONS))
        if how in MUTATE:
            lines[k] = MUTATE[how](draw, lines[k])
        else:
            lines[k:k + 1] = [] if how == "drop" else [lines[k]] * 2
        if not lines:
            return b""
    data = "".join(lines).encode("utf-8")
    if draw(st.integers(0, 9)) == 7:  # cut anywhere, mid-character too (in one example of ten or so)
        data = data[:draw(st.integers(0, len(data)))]
    return data


def answered(result, prog, codes):
    """``result`` (run_tool_main's) is a normal answer (a status of ``codes``) or the one-line refusal, exit 2,
    ``PROG: error: FILE...`` with FILE one of the tool's inputs; stderr has no line that is not the tool's."""
    assert result.returncode in codes + (2,), result.stderr
    lines = result.stderr.splitlines()
    assert "Traceback" not in result.stderr and all(line.startswith(f"{prog}: ") for line in lines), result.stderr
    if result.returncode == 2:
        assert lines and lines[-1].startswith(f"{prog}: error: "), result.stderr
        assert re.match(rf"{re.escape(prog)}: error: {re.escape(tempfile.gettempdir())}\S*?(:\d+)?: ", lines[-1]), \
            lines[-1]
        assert prog == "tools.sweep" or len(lines) == 1, result.stderr  # the summary also warned of each file left out


def _write(directory, name, data):
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def maybe_plot(data, path, out):
    """plot_logs.py on ``path``, in one example of eight or so: drawing takes longer than all the reading
    (its reader is the others'), and what it adds is the drawing of values the readers let through."""
    if data.draw(st.integers(0, 7), label="plot") == 5:
        answered(run_tool_main("tools.plot_logs", path, "-o", os.path.join(out, "x.png"), "--size", "6", "4",
                               "--dpi", "20"), "tools.plot_logs", (0,))


FAST = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@FAST
@given(data=st.data())
def test_every_reader_answers_a_mutated_metrics_file(real_run, data):
    jsonl = data.draw(mutated(real_run["jsonl"]), label="metrics file")
    with tempfile.TemporaryDirectory() as out:
        bad = _write(out, "a_seed0.jsonl", jsonl)
        good = _write(out, "good.jsonl", "".join(real_run["jsonl"]).encode())
        _write(out, "a_seed0.log", "".join(real_run["log"]).encode())
        answered(run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out, "--name", "a"), "tools.sweep", (0,))
        answered(run_tool_main("tools.compare_logs", "--per-dimension", bad, good), "tools.compare_logs", (0,))
        maybe_plot(data, bad, out)


@FAST
@given(data=st.data())
def test_every_reader_answers_a_mutated_log(real_run, data):
    log = data.draw(mutated(real_run["log"]), label="log")
    with tempfile.TemporaryDirectory() as out:
        bad = _write(out, "bimodal_b256_seed0.log", log)
        good = _write(out, "good.log", "".join(real_run["log"]).encode())
        answered(run_tool_main("tools.sweep", "--summarize-only", "--out-dir", out, "--name", "bimodal_b256"),
                 "tools.sweep", (0,))
        answered(run_tool_main("tools.compare_logs", bad, good, "--min-step", "1"), "tools.compare_logs", (0, 1))
        answered(run_tool_main("tools.learning_check", "--summarize-only", "--out-dir", out), "tools.learning_check", (0, 1))
        maybe_plot(data, bad, out)
