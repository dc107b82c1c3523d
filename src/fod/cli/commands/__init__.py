"""Subcommands of ``fod``: each module has ``add_parser(subparsers)`` -> parser and
``run(args)`` -> exit code, and keeps heavy imports (torch, timm) inside ``run``."""
