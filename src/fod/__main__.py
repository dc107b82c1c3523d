"""``python -m fod``: the ``fod`` command, also what ``torchrun -m fod ...`` starts per rank."""

from fod.cli.main import entry

if __name__ == "__main__":
    entry()
