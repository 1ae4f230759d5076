"""Every combination of the authors' logs in tests/golden/ prints the same lines as theirs.

Their logs (tiny runs of their code) are reduced to line shapes (numbers as
``#``); ours, run with the same arguments plus ``--seed 0``, must have the
same shapes line for line. The only differences allowed: our own arguments
after theirs in the ``Arguments:`` block, and the seed line (theirs is
unseeded). Where their code crashed (a ``.partial`` log) ours prints the
same lines and then runs to the end.
"""

import os
import shlex

import pytest

from cli_util import ROOT, line_shape, run_cli, run_main

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def _commands():
    with open(os.path.join(GOLDEN, "commands.txt"), encoding="utf-8") as handle:
        rows = [line.split(":", 1) for line in handle if line.strip() and not line.startswith("#")]
    return [(name.strip(), shlex.split(args)) for name, args in rows]


COMMANDS = _commands()


def reference_shapes(name):
    with open(os.path.join(GOLDEN, f"{name}.shape"), encoding="utf-8") as handle:
        return handle.read().splitlines()


def our_shapes(text, reference):
    """Our log's line shapes, with our own arguments (after the reference's last one) dropped
    and the seed line as the reference prints it unseeded."""
    lines = text.splitlines()
    theirs_last = max(i for i, line in enumerate(reference) if line.startswith("\t"))
    ours_last = max(i for i, line in enumerate(lines) if line.startswith("\t"))
    kept = lines[:theirs_last + 1] + lines[ours_last + 1:]
    return ["\tseed: None" if line.startswith("\tseed: ") else line_shape(line) for line in kept]


def assert_same_shapes(ours, theirs, partial):
    if partial:
        assert ours[:len(theirs)] == theirs
        assert ours[-1].startswith("perm mean: "), "ours must run to the end where theirs crashed"
    else:
        assert ours == theirs


@pytest.mark.parametrize("name,argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_same_line_shapes_as_the_authors(name, argv, capsys):
    rc, out, err = run_main(argv + ["--seed", "0", "--device", "cpu"], capsys)
    assert rc == 0, err
    theirs = reference_shapes(name)
    assert_same_shapes(our_shapes(out, theirs), theirs, name.endswith(".partial"))


@pytest.mark.slow
def test_same_line_shapes_through_the_cli(tmp_path):
    """One of them through the real command line, its --log-file included."""
    name, argv = next(c for c in COMMANDS if c[0] == "es_both_phases")
    log = tmp_path / "run.log"
    proc = run_cli(argv + ["--seed", "0", "--log-file", str(log)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    theirs = reference_shapes(name)
    assert_same_shapes(our_shapes(proc.stdout, theirs), theirs, partial=False)
    assert log.read_text(encoding="utf-8") == proc.stdout


def test_shape_keeps_what_must_match():
    assert line_shape("\tgt_lambda_1: 5") != line_shape("\tgt_lambda_1: 5.0")
    assert line_shape("tensor([ 0.0340, -0.0139])") == line_shape("tensor([-0.0751,  0.0611])")
    assert line_shape("Step: 251 \t Loss: 7.5") == "Step: # \t Loss: #.#"
