"""``python -m textmask``: the command line (see :mod:`textmask.cli`)."""

from textmask.cli import run

if __name__ == "__main__":
    run()
