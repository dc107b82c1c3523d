"""ONNX export of the whole scorer (``fod export``): one graph from images to heat maps and
image scores, with the threshold and config as metadata. Needs ``pip install 'fod[export]'``.

>>> from fod.export import export_onnx, check_onnx
>>> path = export_onnx("bottle.pt", "bottle.onnx")
>>> print(check_onnx(path, "bottle.pt").summary())
"""

from fod.export.onnx import (
    ATOL,
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAMES,
    RTOL,
    CheckResult,
    ExportError,
    check_onnx,
    export_onnx,
    metadata,
    read_metadata,
    run_onnx,
)

__all__ = [
    "ATOL",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "RTOL",
    "CheckResult",
    "ExportError",
    "check_onnx",
    "export_onnx",
    "metadata",
    "read_metadata",
    "run_onnx",
]
