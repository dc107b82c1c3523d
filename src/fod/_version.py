"""The package version, in a module of its own so that subpackages (model files, ONNX
metadata, the CLI) can read it without importing the package root."""

__version__ = "0.1.0"
