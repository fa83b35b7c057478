"""The graph passes `trtq.quantize` can run before calibration: registered by name, run in a fixed order.

The contract every pass follows:

- one module under `trtq/exporter/passes/`, its algebra in the docstring, its function registered
  next to it with `@register_pass(name, order=..., options=<default options>, summary=...)`; the
  registry name is the module name (`rotate_online`, a second pass of `rotate.py`, is the exception);
- signature `fn(model, ctx: PassContext, options) -> PassResult` (`fn(model, ctx)` without options);
  the input model is never modified (tested for every registered pass);
- options: a frozen dataclass whose registered instance holds the defaults; `QuantConfig.pass_options`
  (`--pass-option NAME.FIELD=VALUE`) overrides fields by name;
- `reads_plan=True` marks a pass that reads the placement plan (`PassContext.plan`): it runs after
  every other pass and may change values only (biases), never which tensors get Q/DQ, so the pipeline
  reuses its plan instead of deciding placement a second time.

Passes run in `order` whatever order the user lists them in: scale and rotation folds change the FP32
weights first, bias correction last (it corrects the weights trtq will quantize). `run_passes` names
the failing pass and the ones already run.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import pkgutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from trtq.errors import TrtqError
from trtq.exporter.passes.base import PassResult
from trtq.exporter.passes.context import PassContext

__all__ = [
    "ALIASES",
    "DEFAULT_PASSES",
    "GraphPass",
    "PassRun",
    "default_passes",
    "get_pass",
    "model_family",
    "parse_pass_option",
    "pass_options",
    "register_pass",
    "registered_passes",
    "resolve_passes",
    "run_passes",
]

logger = logging.getLogger(__name__)

PassFn = Callable[..., PassResult]

# Names earlier releases used; still accepted by --passes and QuantConfig.
ALIASES = {"biascorr": "bias_correction"}

# Per (model family, precision), the passes that helped on the bench (README "Graph passes" has the
# figures); a pair not listed runs none.
DEFAULT_PASSES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cnn", "int8"): ("bias_correction",),
    ("cnn", "fp8"): ("bias_correction",),
    ("transformer", "int8"): ("rotate_online",),
}


@dataclass(frozen=True)
class GraphPass:
    """One registered pass.

    Attributes:
        name: the registry name (`--passes`), the pass's module name.
        fn: the pass function.
        order: where it runs among the passes asked for (ascending).
        options: the default options (a frozen dataclass instance), or None for a pass without options.
        summary: one line for `--passes` help.
        reads_plan: reads `PassContext.plan` and keeps placement unchanged (runs last).
    """

    name: str
    fn: PassFn
    order: int
    options: Any
    summary: str
    reads_plan: bool = False

    def __call__(self, model: onnx.ModelProto, ctx: PassContext, options: Any = None) -> PassResult:
        if self.options is None:
            return self.fn(model, ctx)
        return self.fn(model, ctx, self.options if options is None else options)


_REGISTRY: dict[str, GraphPass] = {}
_DISCOVERED: list[bool] = []  # non-empty once every pass module was imported


def register_pass(name: str, *, order: int, summary: str, options: Any = None,
                  reads_plan: bool = False) -> Callable[[PassFn], PassFn]:
    """Register the decorated function as the pass `name` (see the module docstring)."""
    if options is not None and not (dataclasses.is_dataclass(options) and not isinstance(options, type)):
        raise TypeError(f"pass {name}: options must be a dataclass instance (the defaults)")

    def decorate(fn: PassFn) -> PassFn:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"pass {name!r} is registered twice")
        _REGISTRY[name] = GraphPass(name, fn, order, options, summary, reads_plan)
        return fn

    return decorate


def registered_passes() -> dict[str, GraphPass]:
    """Every registered pass, in run order (imports the pass modules on first use)."""
    _discover()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].order))


def _discover() -> None:
    """Import every module of this package once, so their `@register_pass` decorators run."""
    if _DISCOVERED:
        return
    import trtq.exporter.passes as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    last_plain = max((p.order for p in _REGISTRY.values() if not p.reads_plan), default=0)
    early = [p.name for p in _REGISTRY.values() if p.reads_plan and p.order <= last_plain]
    if early:
        raise ValueError(f"passes {early} read the plan and must run after every other pass")
    _DISCOVERED.append(True)


def get_pass(name: str) -> GraphPass:
    """The pass registered as `name` (or an alias of it)."""
    passes = registered_passes()
    canonical = ALIASES.get(name, name)
    if canonical not in passes:
        raise TrtqError(f"unknown pass {name!r}.", f"use --passes with any of: {', '.join(passes)}.")
    return passes[canonical]


def model_family(model: onnx.ModelProto) -> str:
    """"cnn" (has Conv), "transformer" (Softmax and MatMul, no Conv) or "other"."""
    ops = {n.op_type for n in model.graph.node}
    if "Conv" in ops:
        return "cnn"
    if {"Softmax", "MatMul"} <= ops:
        return "transformer"
    return "other"


def default_passes(model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """The passes trtq runs when the user names none."""
    return DEFAULT_PASSES.get((model_family(model), precision), ())


def resolve_passes(names: Sequence[str] | None, model: onnx.ModelProto, precision: str) -> tuple[str, ...]:
    """Validate `names` (None: the family's defaults; aliases allowed) and put them in run order."""
    if names is None:
        return default_passes(model, precision)
    passes = registered_passes()
    unknown = [n for n in names if ALIASES.get(n, n) not in passes]
    if unknown:
        raise TrtqError(f"unknown pass(es) {', '.join(unknown)}.", f"use --passes with any of: {', '.join(passes)}.")
    wanted = {ALIASES.get(n, n) for n in names}
    return tuple(n for n in passes if n in wanted)


def pass_options(name: str, overrides: Mapping[str, Any] | None) -> Any:
    """The options of pass `name`: its defaults with `overrides` (field -> value) applied and validated."""
    graph_pass = get_pass(name)
    if not overrides:
        return graph_pass.options
    if graph_pass.options is None:
        raise TrtqError(f"the {graph_pass.name} pass takes no options.", f"remove the {name} pass options.")
    fields = {f.name: f for f in dataclasses.fields(graph_pass.options)}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        raise TrtqError(f"unknown option(s) {', '.join(unknown)} of the {graph_pass.name} pass.",
                        f"use any of: {', '.join(fields)}.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(graph_pass.options, **values)
    except (TypeError, ValueError) as exc:
        raise TrtqError(f"invalid {graph_pass.name} options {dict(overrides)} ({exc}).",
                        f"see the {graph_pass.name} pass's options: {', '.join(fields)}.") from exc


def parse_pass_option(text: str) -> tuple[str, str, Any]:
    """`NAME.FIELD=VALUE` (the CLI's `--pass-option`) -> (pass, field, value typed like the default).

    Booleans take true/false (1/0, yes/no); tuples take comma-separated values.
    """
    head, sep, raw = text.partition("=")
    name, dot, key = head.partition(".")
    if not sep or not dot or not name or not key:
        raise TrtqError(f"--pass-option {text!r} is not NAME.FIELD=VALUE.", "write e.g. --pass-option cle.relu6=skip.")
    defaults = get_pass(name).options
    if defaults is None or key not in {f.name for f in dataclasses.fields(defaults)}:
        pass_options(name, {key: raw})  # raises the clear error
    return ALIASES.get(name, name), key, _typed(raw, getattr(defaults, key), text)


def _typed(raw: str, default: Any, text: str) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("not a boolean")
            return lowered in ("true", "1", "yes")
        if isinstance(default, tuple):
            element = default[0] if default else ""
            return tuple(_typed(part, element, text) for part in raw.split(",") if part.strip())
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        raise TrtqError(f"--pass-option {text!r}: {raw!r} is not a {type(default).__name__}.",
                        f"pass a value like {default!r}.") from exc
    return raw.strip()


@dataclass
class PassRun:
    """What `run_passes` did: the output model, each pass's report and seconds, and the plan a
    `reads_plan` pass decided (None when none did; the pipeline then plans the output model itself)."""

    model: onnx.ModelProto
    reports: dict[str, Any]
    seconds: dict[str, float]
    plan: Any = None


def run_passes(model: onnx.ModelProto, names: Sequence[str], ctx: PassContext,
               options: Mapping[str, Mapping[str, Any]] | None = None) -> PassRun:
    """Run the passes `names` (already resolved, in run order) on `model`.

    Args:
        model: the FP32 model; not modified.
        names: registry names from `resolve_passes`.
        ctx: the run's context.
        options: pass name (or alias) -> option overrides (`QuantConfig.pass_options`).

    Raises:
        TrtqError: a pass failed; the message names it and the passes already run.
    """
    overrides = {ALIASES.get(k, k): v for k, v in (options or {}).items()}
    run = PassRun(model, {}, {})
    for name in names:
        graph_pass = get_pass(name)
        started = time.perf_counter()
        ctx.last_plan = None
        try:
            result = graph_pass(run.model, ctx, pass_options(name, overrides.get(name)))
        except Exception as exc:
            raise _failure(name, list(run.reports), exc) from exc
        run.model = result.model
        run.reports[name] = result.report
        # an onnx-graphsurgeon graph is a reference cycle (nodes <-> tensors): collect it now, or its
        # copies of the weights live on through calibration (MiniLM + rotate_online: 600 -> 467 MB peak)
        del result
        gc.collect()
        run.seconds[name] = time.perf_counter() - started
        logger.info("pass %s: %.1f s", name, run.seconds[name])
        if graph_pass.reads_plan:
            run.plan = ctx.last_plan  # placement of its input, unchanged by it
    return run


def _failure(name: str, done: list[str], exc: Exception) -> TrtqError:
    after = f" (after {', '.join(done)})" if done else " (the first pass)"
    if isinstance(exc, TrtqError):
        return TrtqError(f"the {name} pass{after}: {exc.message}", exc.fix)
    return TrtqError(f"the {name} pass{after} failed: {type(exc).__name__}: {exc}",
                     f"leave {name} out of --passes (or pass --passes none) and report the model that made it fail.")
