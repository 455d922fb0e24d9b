"""``python -m textmask``: the command line (see :mod:`textmask.cli`)."""

from textmask.cli import main

if __name__ == "__main__":
    main(prog_name="textmask")
