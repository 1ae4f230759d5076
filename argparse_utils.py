"""The command-line parser our scripts share: errors are one line, exit status 2."""

import argparse
import sys

EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error on stderr (``prog: error: ...``, no usage block) and exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_BAD_INPUT)
