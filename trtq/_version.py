"""trtq's version, read by the sidecar report."""

__version__ = "0.1.0"
