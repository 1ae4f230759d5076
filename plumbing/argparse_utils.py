"""What our scripts' command lines share: the parser (one-line errors, exit 2), argument types, tolerant output."""

import argparse
import contextlib
import io
import math
import os
import sys

from plumbing.errors import EXIT_BAD_INPUT


def bounded(kind, at_least=None, above=None, at_most=None):
    """An argparse type: a number of ``kind`` (int, or float: then finite) within the bounds given, which its error
    names (``bounded(int, at_least=1)``: ``must be an integer >= 1, got 0``)."""
    bounds = " and ".join(f"{sign} {limit}" for sign, limit in ((">=", at_least), (">", above), ("<=", at_most))
                          if limit is not None)
    wanted = f"{'an integer' if kind is int else 'a finite number'} {bounds}".strip()

    def parse(text):
        value = kind(text)  # a ValueError: argparse says "invalid <name> value"
        if not ((kind is int or math.isfinite(value)) and (at_least is None or value >= at_least)
                and (above is None or value > above) and (at_most is None or value <= at_most)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


positive_int = bounded(int, at_least=1)


def write_stdout(text):
    """Write and flush ``text``; False when the reader went away (``| head``): not the program's error, so stdout
    then goes to /dev/null and the program goes on to its exit status."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the buffered rest and the exit's flush go nowhere, quietly
        os.close(devnull)
        return False
    return True


def reopen_closed_streams():
    """Put /dev/null where the shell closed a standard stream (``>&-``); call it first: else ``sys.stderr`` is None
    and the next file opened takes the free descriptor (a log that receives what is written to "stderr")."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        with contextlib.suppress(OSError):
            os.fstat(fd)
            continue
        null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False, errors="backslashreplace"))


def same_file(path, other):
    """Whether two paths name one file (the same path spelled differently, a link, a hard link)."""
    try:
        return os.path.realpath(path) == os.path.realpath(other) or os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: ...``, no usage block) and exit 2. Every script builds its
    parser first, so building one lets stdout and stderr take any write: a closed one becomes /dev/null, and a
    character their encoding lacks (an ASCII locale; our output has λ and ±) comes out as a ``\\u03bb`` escape."""

    def __init__(self, *args, **kwargs):
        reopen_closed_streams()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):  # not a text stream of ours
                stream.reconfigure(errors="backslashreplace")
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)
