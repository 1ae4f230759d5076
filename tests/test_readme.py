"""The README says what the code does: its flags table is the parser's, its commands exist."""

import os
import re

import command_line
import losses
from cli_util import ROOT


def flag_rows(parser):
    """The README's flags table rows, as the parser defines them (flag, default, help)."""
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


def test_the_flags_table_is_the_parser():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read().splitlines()
    table = [line for line in readme if re.match(r"^\| `--", line)]
    assert table == flag_rows(command_line.build_parser(losses.LOSSES))
