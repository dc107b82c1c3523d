"""``fod export MODEL --out FILE``: the whole scorer as one ONNX graph for deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from fod.cli import common


def _is_onnx(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (which an export may replace)."""
    try:
        import onnx

        return bool(onnx.load(str(path), load_external_data=False).graph.node)
    except Exception:
        return False


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from fod.export.onnx import DEFAULT_OPSET

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (images -> heat maps and scores)",
        description=(
            "Write MODEL as one ONNX graph: input 'images' float32 (B, 3, S, S) RGB in [0, 1], "
            "outputs 'maps' (B, S, S) heat maps and 'scores' (B,) image scores, the same values "
            "as `fod predict`. The threshold, image size, config and fod version are stored as "
            "ONNX metadata. Needs onnx (and onnxruntime for --check): pip install 'fod[export]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model file from `fod train`")
    parser.add_argument(
        "--out", metavar="FILE", help="ONNX file to write (default: MODEL with suffix .onnx)"
    )
    common.add_force_option(parser, "an ONNX file")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per call, fixed in the graph (default: 1)"
    )
    parser.add_argument(
        "--dynamic-batch",
        action="store_true",
        help="let the graph take any batch size instead of a fixed one",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run the exported file with onnxruntime on a random batch, compare with PyTorch "
        "and print the largest difference (an error if beyond tolerance)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from fod.api import FOD
    from fod.errors import OutputError, option
    from fod.export import check_onnx, export_onnx
    from fod.io import check_not_input, check_writable

    out = Path(args.out) if args.out else Path(args.model).with_suffix(".onnx")
    check_not_input(out, [args.model], "the model file")
    check_writable(out)
    if out.is_file() and not args.force and not _is_onnx(out):
        raise OutputError(
            f"{out}: exists and is not an ONNX file; the export would replace it. Choose "
            f"another path, or pass {option('force=True', '--force')} to replace it."
        )
    model = FOD.load(args.model, device="cpu", progress=False)
    path = export_onnx(
        model, out, batch_size=args.batch_size, opset=args.opset, dynamic_batch=args.dynamic_batch
    )
    size = model.config.image_size
    batch = "B" if args.dynamic_batch else str(args.batch_size)
    megabytes = path.stat().st_size / 2**20
    print(f"exported {args.model} -> {path} ({megabytes:.1f} MB, opset {args.opset})")
    print(f"  input  images float32 ({batch}, 3, {size}, {size}) RGB in [0, 1]")
    print(f"  output maps float32 ({batch}, {size}, {size}), scores float32 ({batch},)")
    print(f"  threshold {model.threshold:.6g} (anomalous when score > threshold)")
    if args.check:
        result = check_onnx(path, model, raise_on_mismatch=True)
        print(f"check: {result.summary()}")
    return 0
