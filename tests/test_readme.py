"""The README and docs/ say what the code does: the flags table is the parser's, the README's two
commands are the ones CI and a newcomer run, every documented command parses, every link leads somewhere.

The documentation is the README (what it is, the two commands, the two experiments, the figure) and
the files of docs/ it links to; each check reads every file, so moving a section between them keeps
it checked.
"""

import contextlib
import functools
import importlib
import io
import os
import re
import shlex
import subprocess

import pytest

import command_line
from cli_util import ROOT, tool_argv

README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
FLAGS_DOC = os.path.join(DOCS, "flags.md")
# What a newcomer reads in five minutes; the rest belongs in docs/.
README_MAX_LINES = 200

# The README's two commands for a fresh machine, character for character: the set-up and main run,
# and the test command that CI (.ci/run) runs.
FRESH_MACHINE = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python main_mlp.py "
    "--n 10 --batch-size 1000 --space extended_sphere --c-p 0 --p 0 --only-unsupervised --gt-lambda-1 5 "
    "--gt-lambda-2 25 --n-steps 334 --seed 0")
TEST_COMMAND = ".venv/bin/python -m pytest -q tests"

INTERPRETERS = re.compile(r"^(python3?|\S*/bin/python3?|bash)$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def documents():
    """[(path, text)]: the README, then every markdown file of docs/ (sorted)."""
    paths = [README] + sorted(os.path.join(DOCS, name) for name in os.listdir(DOCS) if name.endswith(".md"))
    return [(path, read(path)) for path in paths]


def flag_rows(parser):
    """The flags table rows, as the parser defines them (flag, default, help)."""
    rows = []
    for action in parser._actions:  # argparse has no public list of its arguments
        if not action.option_strings or action.dest == "help":
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:
            default = "off"
        else:
            default = "''" if action.default == "" else str(action.default)
        text = action.help
        if action.choices is not None and not isinstance(action.choices, range):
            text += "; choices: " + ", ".join(map(str, action.choices))
        rows.append(f"| `{flag}` | `{default}` | {text.replace('|', chr(92) + '|')} |")
    return rows


def table_rows(text):
    return [line for line in text.splitlines() if re.match(r"^\| `--", line)]


def bash_blocks(text):
    """The contents of the ```bash blocks of a markdown text."""
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def commands(block):
    """The commands of a bash block as token lists: continuation lines joined, comments dropped,
    ``A && B`` split, and variables set by a ``NAME="..."`` line expanded where a token is ``$NAME``."""
    variables, result = {}, []
    for line in block.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        if len(tokens) == 1 and re.match(r"^[A-Za-z_]\w*=", tokens[0]):
            name, value = tokens[0].split("=", 1)
            variables[name] = shlex.split(value)
            continue
        expanded = []
        for token in tokens:
            expanded += variables.get(token[1:], [token]) if token.startswith("$") else [token]
        while expanded:
            cut = expanded.index("&&") if "&&" in expanded else len(expanded)
            result.append(expanded[:cut])
            expanded = expanded[cut + 1:]
    return result


def script_of(command):
    """(script, its arguments) of a command that runs one of ours, a script or a tool (``python -m tools.sweep``:
    ``tools.sweep``), or None (pip, ``-m pytest``, squeue, ...)."""
    start = next((i for i, token in enumerate(command) if "=" not in token), len(command))  # VAR=x cmd
    command = command[start:]
    if len(command) >= 3 and INTERPRETERS.match(command[0]) and command[1] == "-m":
        return (command[2], command[3:]) if command[2].startswith("tools.") else None
    if len(command) < 2 or not INTERPRETERS.match(command[0]) or command[1].startswith("-"):
        return None
    return command[1], command[2:]


@functools.lru_cache(maxsize=None)  # one --help per script and session
def option_strings(script):
    """The options a script of ours accepts, read from what it prints: ``--help`` for a Python script,
    the usage line of its error for a shell script run with no arguments."""
    if script.endswith(".sh"):
        res = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
        return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", res.stderr.split("usage:", 1)[1]))
    res = subprocess.run(tool_argv(script, "--help"), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    options = set()
    for line in res.stdout.splitlines():
        if re.match(r"^  -", line):  # argparse's option column: "  -o OUT, --output OUT   help"
            invocation = re.split(r"\s{2,}", line.strip())[0]
            options.update(re.findall(r"(?:^|, )(--?[A-Za-z][\w-]*)", invocation))
    return options


def main_mlp_problem(args):
    """None when main_mlp.py's parser accepts ``args``, else its one-line error."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            command_line.build_parser().parse_args(args)
    except SystemExit:
        return stderr.getvalue().strip() or "refused"
    return None


def documented_commands():
    """[(document name, script, arguments)] of every command in a bash block that runs one of ours."""
    found = []
    for path, text in documents():
        for block in bash_blocks(text):
            for command in commands(block):
                run = script_of(command)
                if run is not None:
                    found.append((os.path.relpath(path, ROOT), *run))
    return found


def test_the_flags_table_is_the_parser():
    with open(FLAGS_DOC, encoding="utf-8") as handle:
        table = table_rows(handle.read())
    assert table == flag_rows(command_line.build_parser())


def test_the_flags_table_is_in_one_place():
    # A second copy of a row elsewhere would not be checked against the parser and would drift.
    elsewhere = {path: table_rows(text) for path, text in documents() if path != FLAGS_DOC}
    assert {path: rows for path, rows in elsewhere.items() if rows} == {}


def test_the_readme_is_short_and_opens_with_the_two_commands():
    with open(README, encoding="utf-8") as handle:
        text = handle.read()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert bash_blocks(text)[:2] == [FRESH_MACHINE + "\n", TEST_COMMAND + "\n"]


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    assert lines[-1] == TEST_COMMAND
    assert "-r requirements.txt" in "\n".join(lines)


def test_every_documented_command_parses():
    found = documented_commands()
    # The fresh machine's run, the two experiments, the figure's sweep, summary and plot, the cluster's
    # two sweeps and summary, the GPU check: a command lost from the documents fails here too.
    assert sorted({script for _, script, _ in found}) == ["gpu_check.sh", "main_mlp.py", "tools.plot_logs",
                                                           "tools.sweep"]
    assert len(found) >= 10
    options = {script: option_strings(script) for script in {script for _, script, _ in found}
               if script != "main_mlp.py"}
    problems = []
    for where, script, args in found:
        path = script.replace(".", os.sep) + ".py" if script.startswith("tools.") else script
        assert os.path.isfile(os.path.join(ROOT, path)), f"{where}: no {path}"
        ours, theirs = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, None)
        if script == "main_mlp.py":
            ours, theirs = [], ours
        unknown = [token for token in ours if token.startswith("-") and token not in options[script]]
        if unknown:
            problems.append(f"{where}: {script} has no {' '.join(unknown)}")
        if theirs is not None and (problem := main_mlp_problem(theirs)) is not None:
            problems.append(f"{where}: {script} ... {shlex.join(theirs)}: {problem}")
    assert not problems, "\n".join(problems)


def test_an_unknown_flag_in_a_command_is_caught():
    # The check above would notice a renamed flag: main_mlp.py's parser refuses one, and sweep.py's
    # options do not include main_mlp.py's.
    assert main_mlp_problem(["--n", "10", "--no-such-flag"]) is not None
    assert main_mlp_problem(["--space", "extended_sphere"]) is None  # argparse's abbreviation, as documented
    sweep = option_strings("tools.sweep")
    assert "--seeds" in sweep and "--out-dir" in sweep and "--n-steps" not in sweep
    assert {"--device", "--dry", "--budget"} <= option_strings("gpu_check.sh")


def heading_anchors(text):
    """The anchors GitHub gives a markdown text's headings: lower case, punctuation dropped, spaces to -."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_every_link_leads_somewhere():
    problems, count = [], 0
    for path, text in documents():
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            count += 1
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(resolved):
                problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such file")
            elif anchor:
                with open(resolved, encoding="utf-8") as handle:
                    if anchor not in heading_anchors(handle.read()):
                        problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)
    assert count >= 10


@pytest.mark.parametrize("name", ["flags.md", "log-format.md", "resume.md", "cluster.md", "tools.md",
                                  "speed.md", "gpu-check.md", "contributing.md", "reproduction.md"])
def test_the_readme_links_every_document(name):
    with open(README, encoding="utf-8") as handle:
        assert f"](docs/{name})" in handle.read()


# Names the docs use as placeholders for a contributor's own module member or tool.
PLACEHOLDERS = {"tools.NAME", "losses.builder", "latent_spaces.builder"}
FILE_SUFFIXES = {"py", "md", "jsonl", "log", "csv", "png", "pth", "txt", "out", "err", "sh", "lock"}


def code_names():
    """{name a doc may write a module by: its import path}: the top-level modules, the two packages and
    their modules (also by their own name: ``metrics_io.read`` is ``tools.metrics_io.read``)."""
    names = {"plumbing": "plumbing", "tools": "tools"}
    for folder in ("", "plumbing", "tools"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            stem = name[:-3]
            if name.endswith(".py") and stem != "__init__":
                names[stem] = f"{folder}.{stem}" if folder else stem
    return names


def resolves(module, parts):
    """Whether ``module.parts[0].parts[1]...`` is an attribute chain (or a submodule) of the code."""
    obj = importlib.import_module(module)
    for i, part in enumerate(parts):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join([module, *parts[:i + 1]]))
        except ImportError:
            return False
    return True


def test_every_name_of_the_code_the_docs_use_exists():
    """A doc's ``settings.LOSSES`` or ``plumbing.checkpoint.resume_state`` names an object that exists:
    a renamed or removed one is caught here, not by a reader (training_logs' notes included)."""
    assert resolves("plumbing", ["checkpoint", "resume_state"]) and resolves("tools.metrics_io", ["Records", "steps"])
    assert not resolves("settings", ["ADDED_FLAG_DEFAULTS"])  # a name that was removed
    names = code_names()
    reference = re.compile(r"(?<![\w./-])(" + "|".join(sorted(names, key=len, reverse=True))
                           + r")((?:\.[A-Za-z_]\w*)+)")
    notes = [os.path.join(folder, name) for folder, _, files in os.walk(os.path.join(ROOT, "training_logs"))
             for name in files if name.endswith(".md")]
    problems, count = [], 0
    for path, text in documents() + [(path, read(path)) for path in sorted(notes)]:
        for match in reference.finditer(text):
            parts = match.group(2)[1:].split(".")
            if parts[0] in FILE_SUFFIXES or match.group(0) in PLACEHOLDERS:
                continue
            count += 1
            if not resolves(names[match.group(1)], parts):
                problems.append(f"{os.path.relpath(path, ROOT)}: {match.group(0)}")
    assert not problems, "names of the code that do not exist:\n" + "\n".join(sorted(set(problems)))
    assert count >= 50
