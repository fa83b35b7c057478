"""Spies that stand in for TensorRT objects and check every attribute used against the real classes.

With the real bindings over stub libraries (`trtq.testing.tensorrt_api`) nothing native can be
created, so a `trt.Builder` cannot exist. `SpyFactory(trt)` makes, in its place, a `Spy` of the real
class: each attribute read, call or assignment is looked up on that class of the imported version,
recorded in `used` when it exists, and recorded in `missing` (and raised as AttributeError, as the
real object would) when it does not. Calls return what the binding's signature says they return,
read from its pybind11 docstring: a Spy of the returned class, the first member of a returned enum,
or a plain value for `int`, `bool`, `str`, lists and buffers. Assigned properties read back.

So code written against TensorRT (trtq's `trtq.engine._trt` and the Polygraphy calls it makes) runs
unchanged on a spy, and `missing` lists exactly the names that version lacks. A Spy computes
nothing: it is an API-surface check, never an engine.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["Spy", "SpyFactory"]

# Functions whose docstring in some versions names no class (11.4: "get_plugin_registry() ->
# detail::accessor<...>"): what they return in every version.
_GARBLED = {"get_plugin_registry": "IPluginRegistry", "get_builder_plugin_registry": "IPluginRegistry"}
_PLAIN = {"bool": True, "int": 0, "float": 0.0, "str": ""}
_RETURNS = re.compile(r"\)\s*->\s*([\w.]+(?:\[[^\n]*?\])?)")


class _Memory(bytes):
    """An `IHostMemory` stand-in: a non-empty buffer usable as a context manager."""

    def __enter__(self) -> _Memory:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class SpyFactory:
    """`make(name, *args)` for `trtq.engine._trt`: a Spy of class `name`, or of what function `name` returns."""

    def __init__(self, trt: Any, overrides: dict[str, Any] | None = None) -> None:
        self.trt = trt
        self.used: set[str] = set()
        self.missing: set[str] = set()
        self.overrides = dict(overrides or {})

    def __call__(self, name: str, *args: Any) -> Any:
        target = getattr(self.trt, name, None)
        if target is None:
            self.missing.add(name)
            raise AttributeError(name)
        self.used.add(name)
        if isinstance(target, type):
            return Spy(self, name)
        if name in _GARBLED:
            return Spy(self, _GARBLED[name])
        return self.value(target.__doc__)

    def value(self, doc: str | None) -> Any:
        """What a binding documented as `doc` returns, as a stand-in."""
        found = _RETURNS.search(doc or "")
        kind = found.group(1) if found else "None"
        short = kind.rsplit(".", 1)[-1]
        if kind.startswith("tensorrt.") or kind.startswith("tensorrt_bindings."):
            if short == "IHostMemory":
                return _Memory(b"\0")
            cls = getattr(self.trt, short, None)
            members = getattr(cls, "__members__", None)
            if members:
                return next(iter(members.values()))
            return Spy(self, short) if cls is not None else None
        base = short.split("[")[0].lower().replace("supportsint", "int").replace("supportsfloat", "float")
        if base in _PLAIN:
            return _PLAIN[base]
        if "list" in kind.lower() or "sequence" in kind.lower():
            return []
        return None if base == "none" else object()  # a handle (capsule) or another opaque value


class Spy:
    """One stand-in TensorRT object of class `cls` (a name on the `tensorrt` module)."""

    def __init__(self, factory: SpyFactory, cls: str) -> None:
        object.__setattr__(self, "_spy", (factory, cls, {}))

    def _lookup(self, name: str) -> Any:
        factory, cls, _ = object.__getattribute__(self, "_spy")
        real = getattr(getattr(factory.trt, cls, None), name, None)
        key = f"{cls}.{name}"
        if real is None:
            factory.missing.add(key)
            raise AttributeError(key)
        factory.used.add(key)
        return real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        factory, cls, values = object.__getattribute__(self, "_spy")
        real = self._lookup(name)
        key = f"{cls}.{name}"
        if key in factory.overrides:
            return factory.overrides[key]
        if isinstance(real, property):
            return values[name] if name in values else factory.value(real.fget.__doc__ if real.fget else None)
        return lambda *args, **kwargs: factory.value(real.__doc__)

    def __setattr__(self, name: str, value: Any) -> None:
        factory, cls, values = object.__getattribute__(self, "_spy")
        real = self._lookup(name)
        if not isinstance(real, property) or real.fset is None:
            factory.missing.add(f"{cls}.{name} (not settable)")
            raise AttributeError(f"{cls}.{name} is not settable")
        values[name] = value

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0
