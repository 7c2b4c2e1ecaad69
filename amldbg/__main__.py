"""``python -m amldbg``: the ``amldbg`` command (:mod:`amldbg.cli`)."""

import sys

from amldbg.cli import main

if __name__ == "__main__":
    sys.exit(main())
