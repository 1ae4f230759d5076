"""What our scripts' command lines share: the parser (errors are one line, exit status 2) and argument types."""

import argparse
import sys

EXIT_BAD_INPUT = 2


def positive_int(text):
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error on stderr (``prog: error: ...``, no usage block) and exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)
