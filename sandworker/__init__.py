"""sandworker: a sandboxed script worker daemon."""

__version__ = "0.1.0"
