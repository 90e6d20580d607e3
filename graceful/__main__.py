"""``python -m graceful``: the same command line as the ``graceful`` script."""

import sys

from graceful.cli import main

if __name__ == "__main__":
    sys.exit(main())
