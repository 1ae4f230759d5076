"""What the tools share: their parser (its description the docstring as written), the one-line error and
warning, a line on stdout, the flags that pick a phase, a number in a table."""

import argparse
import math
import sys

from plumbing.argparse_utils import EXIT_BAD_INPUT, ArgumentParser, write_stdout


def parser(prog, doc, **kwargs):
    return ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def add_phase(parser, what):
    parser.add_argument("--phase", choices=("unsupervised", "supervised"), default="unsupervised",
                        help=f"the phase of the logs to {what} (default: %(default)s)")


def error(prog, message):
    """``PROG: error: MESSAGE`` on stderr; returns the exit status of bad input."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    return EXIT_BAD_INPUT


def warn(prog, message):
    sys.stderr.write(f"{prog}: warning: {message}\n")


def say(line):
    """One line on stdout in one write (worker threads' lines do not interleave); a closed stdout (``| head``)
    stops nothing."""
    write_stdout(line + "\n")


def number(value, digits=4, signed=False):
    """A number for the tables: fixed decimals (``signed``: with its sign), nan and inf as they are, None as -."""
    if value is None:
        return "-"
    return f"{value:{'+' if signed and math.isfinite(value) else ''}.{digits}f}"
