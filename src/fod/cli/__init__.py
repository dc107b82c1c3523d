"""The ``fod`` command line: ``fod.cli.main.main`` parses, dispatches and reports errors.

Each subcommand lives in its own module of :mod:`fod.cli.commands` with ``add_parser`` and
``run``; :data:`fod.cli.main.COMMANDS` lists them.
"""
