"""``fod generate OUT``: write the seeded synthetic data set (MVTec AD layout)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "generate",
        help="write a small synthetic data set with pixel masks",
        description=(
            "Write generated categories (fabric, tiles, board) in the MVTec AD layout to OUT: "
            "the same bytes for the same options, nothing downloaded."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="folder to write the categories into")
    parser.add_argument(
        "--categories",
        nargs="+",
        metavar="NAME",
        default=None,
        help="categories to write (default: all)",
    )
    parser.add_argument("--image-size", type=int, default=128, help="default: 128")
    parser.add_argument("--n-train", type=int, default=60, help="good training images per category")
    parser.add_argument("--n-test-good", type=int, default=15, help="good test images")
    parser.add_argument(
        "--n-test-per-defect", type=int, default=6, help="test images per defect type"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.data import synthetic
    from fod.io import check_writable

    check_writable(args.out, folder=True)
    categories = args.categories or list(synthetic.CATEGORIES)
    out = synthetic.generate(
        args.out,
        categories=categories,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        seed=args.seed,
    )
    print(f"wrote {', '.join(categories)} to {out}")
    return 0
