"""Optional test dependencies: skipped on a developer's machine, required in CI.

The real-model tests need packages the README's test command installs (torch, the EfficientNet-Lite0
and all-MiniLM-L6-v2 packages, scikit-image, scikit-learn, transformers). Locally a missing one skips
its tests with the reason; in CI (`CI=true`, set by `.ci/run` and by hosted CI services) it fails them,
so a broken install can never pass as a run that skipped the real models. trtq's own modules are
imported plainly everywhere: a broken `trtq.testing` fails, it is never skipped.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["in_ci", "module"]


def in_ci() -> bool:
    """True when the `CI` environment variable says so (true / 1 / yes)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def module(name: str) -> ModuleType:
    """Import `name`: skip the calling test (or module) when it is missing, unless in CI, where it fails."""
    if in_ci():
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"CI=true and the test dependency {name!r} cannot be imported ({exc}); the README's "
                        "test command installs it", pytrace=False)
    return pytest.importorskip(name, reason=f"{name} is not installed (CI=true makes this a failure)")
