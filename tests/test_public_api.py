"""Public API per subpackage: what looks public is in `__all__`, and `__all__` names only what exists.

Public-looking: a function or class defined in the module, or a module-level UPPER_CASE constant, whose
name has no leading underscore. Names imported from elsewhere (re-exports) may be listed or not.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import trtq

SUBPACKAGES = ("trtq", "trtq.calibrators", "trtq.exporter", "trtq.exporter.passes", "trtq.exporter.check",
               "trtq.plugins", "trtq.testing")
# modules that import optional heavy dependencies at import time (torch, TensorRT bindings)
_OPTIONAL = ("trtq.testing.tensorrt_api", "trtq.plugins.trt_plugin", "trtq.plugins.qdp_register")


def _modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.ispkg and info.name != "__main__" and f"{package}.{info.name}" not in _OPTIONAL:
            names.append(f"{package}.{info.name}")
    return names


def _defined_public(module) -> set[str]:
    """Public functions/classes defined in the module and its public UPPER_CASE constants."""
    source = Path(inspect.getfile(module)).read_text(encoding="utf-8")
    tree = ast.parse(source)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper())
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_all_lists_exactly_the_public_names(package: str) -> None:
    problems = []
    for name in _modules(package):
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        private = name.rsplit(".", 1)[-1].startswith("_")
        if exported is None:
            problems += [] if private else [f"{name}: no __all__"]
            continue
        missing = sorted(n for n in exported if not hasattr(module, n))
        unlisted = sorted(_defined_public(module) - set(exported))
        if private:
            unlisted = []  # a private module's public names serve the package, not users
        problems += [f"{name}: __all__ names missing {n}" for n in missing]
        problems += [f"{name}: public {n} not in __all__" for n in unlisted]
    assert not problems, "\n".join(problems)


def test_no_private_name_is_imported_across_modules() -> None:
    """trtq and bench import no `_private` name from another module (a package's `_io`-style modules
    are fine: their public names are the package's internal API)."""
    root = Path(trtq.__file__).parent.parent
    problems = []
    for path in sorted([*root.joinpath("trtq").rglob("*.py"), *root.joinpath("bench").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                   if a.name.startswith("trtq")}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trtq"):
                problems += [f"{path.relative_to(root)}:{node.lineno} imports {a.name} from {node.module}"
                             for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
                             and not _is_module(f"{node.module}.{a.name}")]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                  and node.attr.startswith("_") and not node.attr.startswith("__")
                  and not _is_module(f"{node.value.id}.{node.attr}")):
                problems.append(f"{path.relative_to(root)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
