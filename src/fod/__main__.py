"""``python -m fod``: the ``fod`` command, also what ``torchrun -m fod ...`` starts per rank."""

import sys

from fod.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
