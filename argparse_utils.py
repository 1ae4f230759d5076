"""What our scripts' command lines share: the parser (errors are one line, exit status 2), argument
types, and output that neither an ASCII-only terminal nor a closed pipe turns into a traceback."""

import argparse
import io
import os
import sys

EXIT_BAD_INPUT = 2


def positive_int(text):
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def tolerant_output():
    """Let stdout and stderr write any character: where their encoding lacks one (PYTHONIOENCODING=ascii,
    an ASCII locale), λ or ± come out as ``\\u03bb`` escapes instead of a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, io.UnsupportedOperation):  # not a text stream of ours to change
            pass


def reopen_closed_streams():
    """Give a standard stream the caller closed (``>&-``, not a pipe) /dev/null in its place: the
    program's output then goes nowhere, quietly, instead of ``None.write`` tracebacks, and no file the
    program opens later takes descriptor 1 or 2 (where a child's output would land in it)."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, encoding="utf-8", errors="backslashreplace", closefd=False))


def write_stdout(text):
    """Write ``text`` to stdout and flush it. A reader that went away (``| head``, ``| true``) is not an
    error of the program: stdout then goes to /dev/null, and the program goes on to its exit status."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the buffered rest and the exit's flush go nowhere, quietly
        os.close(devnull)


def same_file(path, other):
    """Whether two paths name one file (the same path spelled differently, a link, a hard link)."""
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error on stderr (``prog: error: ...``, no usage block) and exit 2.

    Making one also makes stdout and stderr tolerant (:func:`tolerant_output`): every script
    builds its parser first, and our help and results have λ, Λ̂ and ± in them.
    """

    def __init__(self, *args, **kwargs):
        tolerant_output()
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)
