"""Export a torch.nn.Module to an FP32 ONNX file: BatchNorm folded, constants folded, shapes inferred.

Exporter choice: trtq uses torch's ``dynamo=True`` exporter (``torch.export`` + onnxscript), not
the TorchScript one. Measured on torch 2.13 with the two models trtq is judged on:

- all-MiniLM-L6-v2 (transformers 5): the TorchScript exporter traces the attention-mask code as
  Python, so the exported graph is only right for the example's sequence length (max abs error
  6.5 on another length); the dynamo graph matches torch within 6e-5 at any batch and length.
  The TorchScript exporter also rejects keyword-only example inputs with this model.
- EfficientNet-Lite0: both are correct; the dynamo graph is clean (49 Conv, Pads fused into
  them), the TorchScript one keeps 17 Pad subgraphs of 222 Constant nodes.

Costs of the choice: the dynamo exporter's lowest opset is 18 (its down-conversion to 17 failed
on EfficientNet-Lite0's Pad and left an invalid ReduceMean), so ``opset`` must be >= 18, which
every TensorRT from 10.3 (JetPack 6) on parses; and an export takes seconds, not tenths.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from trtq._io import save_model
from trtq._shapes import add_inferred_shapes
from trtq.errors import TrtqError
from trtq.exporter.passes.context import PassContext
from trtq.exporter.passes.fold_batchnorm import fold_batchnorm as fold_batchnorm_pass

if TYPE_CHECKING:
    import torch

__all__ = ["MIN_OPSET", "export"]

logger = logging.getLogger(__name__)

MIN_OPSET = 18
# Initializers above this many elements are hidden from onnx shape inference (it cannot take > 2 GB).
_SHAPE_INFERENCE_STUB_ELEMENTS = 1 << 14
# Node metadata torch writes that holds absolute source paths: dropped so outputs are reproducible.
_DEBUG_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]


def export(
    model: torch.nn.Module,
    example_inputs: tuple | dict | torch.Tensor,
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    opset: int = MIN_OPSET,
    fold_batchnorm: bool = True,
) -> Path:
    """Export `model` to an FP32 ONNX file that trtq's passes and TensorRT take.

    The model runs in eval mode during export (every submodule's training flag is restored
    afterwards). The file is written atomically, with weights in ``<name>.data`` beside it when
    the model is over 2 GB, and is byte-identical for the same model and inputs.

    Args:
        model: the module to export.
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs
            (graph inputs then follow the dict's order).
        path: where to write the ``.onnx`` file.
        input_names: graph input names, in order (default: the forward's parameter names).
        output_names: graph output names, in order.
        dynamic_axes: ``{input or output name: {axis: dim name}}`` or ``{name: [axis, ...]}``.
        opset: ONNX opset of the output, at least `MIN_OPSET`.
        fold_batchnorm: fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm.
            With False the BatchNormalization nodes stay and only constant folding runs.

    Returns:
        The path written.

    Raises:
        TrtqError: bad arguments, an unwritable path, or a model torch cannot export (the
            message names the submodule that failed).
    """
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise TrtqError(
            f"model is a {type(model).__name__}, not a torch.nn.Module.", "pass the nn.Module to export."
        )
    args, kwargs = _split_inputs(example_inputs, model, torch)
    names = _input_names(input_names, args, kwargs, model, torch)
    _check_names(output_names, "output_names")
    _check_opset(opset)
    path = _check_output_path(path)
    dynamic_shapes, output_axes = _dynamic_shapes(dynamic_axes, args, kwargs, names, output_names or ())
    proto = _torch_export(model, args, kwargs, input_names, output_names, dynamic_shapes, opset)
    _check_exported(proto, input_names, output_names, opset)
    _check_input_axes(proto, dynamic_axes or {}, output_names or ())
    proto = _optimize(proto, fold_batchnorm)
    _name_output_axes(proto, output_axes)
    _strip_debug_metadata(proto)
    proto = add_inferred_shapes(proto, _SHAPE_INFERENCE_STUB_ELEMENTS)
    try:
        save_model(proto, path)
    except OSError as exc:
        raise TrtqError(f"cannot write {path} ({exc.strerror or exc}).", "choose a writable path.") from exc
    logger.info("exported %s to %s", type(model).__name__, path)
    return path


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise TrtqError("exporting a torch model needs torch.", "pip install 'trtq[torch]'.") from exc
    return torch


def _split_inputs(example_inputs: Any, model: torch.nn.Module, torch: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a tensor, tuple or dict, or a `TrtqError`."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, tuple):
        args, kwargs = example_inputs, {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
        _check_kwargs(kwargs, model)
    else:
        raise TrtqError(
            f"example_inputs is a {type(example_inputs).__name__}.",
            "pass a torch.Tensor, a tuple of positional inputs, or a dict of keyword inputs.",
        )
    if not any(isinstance(leaf, torch.Tensor) for leaf in _leaves((args, kwargs))):
        raise TrtqError(
            "example_inputs holds no torch.Tensor.", "pass example tensors for the model's inputs."
        )
    return args, kwargs


def _check_kwargs(kwargs: dict, model: torch.nn.Module) -> None:
    bad = [key for key in kwargs if not isinstance(key, str)]
    if bad:
        raise TrtqError(
            f"example_inputs has non-string keys {bad}.", "key the dict by forward's parameter names."
        )
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TrtqError(
            f"example_inputs has keys {unknown} that {type(model).__name__}.forward does not take.",
            f"use its parameter names: {list(params)}.",
        )


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, (tuple, list)):
        for item in tree:
            yield from _leaves(item)
    elif isinstance(tree, Mapping):
        for item in tree.values():
            yield from _leaves(item)
    else:
        yield tree


def _check_names(names: Sequence[str] | None, what: str) -> None:
    if names is None:
        return
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise TrtqError(
            f"{what} must be a list of non-empty strings, got {names!r}.", f"pass {what}=['...', ...]."
        )
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise TrtqError(f"{what} repeats {duplicates}.", f"give every entry of {what} its own name.")


def _input_names(
    given: Sequence[str] | None, args: tuple, kwargs: dict, model: torch.nn.Module, torch: Any
) -> list[str]:
    """The graph input names export will produce: `given`, else dict keys or forward's parameters."""
    _check_names(given, "input_names")
    count = sum(isinstance(leaf, torch.Tensor) for leaf in _leaves((args, kwargs)))
    if given is not None and len(given) > count:
        raise TrtqError(
            f"input_names has {len(given)} names but example_inputs has {count} tensors.",
            "give one name per example input tensor.",
        )
    if given is not None:
        return list(given)
    if kwargs:
        return [key for key, value in kwargs.items() if isinstance(value, torch.Tensor)]
    params = list(inspect.signature(model.forward).parameters)
    return [params[i] for i, arg in enumerate(args[: len(params)]) if isinstance(arg, torch.Tensor)]


def _check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise TrtqError(
            f"opset {opset!r} is not supported: torch's dynamo exporter writes opset {MIN_OPSET} or newer "
            f"and the installed onnx knows up to {newest}.",
            f"pass opset between {MIN_OPSET} and {newest} (TensorRT 10.3 and newer parse {MIN_OPSET}).",
        )


def _check_output_path(path: str | os.PathLike[str]) -> Path:
    try:
        path = Path(path)
    except TypeError as exc:
        raise TrtqError(f"path {path!r} is not a file path.", "pass a str or pathlib.Path.") from exc
    if path.is_dir():
        raise TrtqError(f"{path} is a directory.", "pass a file path such as model.onnx.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise TrtqError(
            f"cannot write {path}: {parent} is not a writable directory.", "choose a writable path."
        )
    return path


def _dynamic_shapes(
    dynamic_axes: DynamicAxes | None,
    args: tuple,
    kwargs: dict,
    input_names: list[str],
    output_names: Sequence[str],
) -> tuple[Any, dict[str, dict[int, str]]]:
    """Split `dynamic_axes` into torch's ``dynamic_shapes`` (inputs) and output axes to rename."""
    if not dynamic_axes:
        return None, {}
    unknown = sorted(set(dynamic_axes) - set(input_names) - set(output_names))
    if unknown:
        raise TrtqError(
            f"dynamic_axes names {unknown}, which are neither input names {input_names} "
            f"nor output names {list(output_names)}.",
            "key dynamic_axes by the names given in input_names / output_names.",
        )
    import torch

    specs: list[dict[int, str] | None] = []
    position = 0
    for value in list(args) if args else list(kwargs.values()):
        count = sum(isinstance(leaf, torch.Tensor) for leaf in _leaves(value))
        names = input_names[position : position + count]
        position += count
        named = [n for n in names if n in dynamic_axes]
        if named and not isinstance(value, torch.Tensor):
            raise TrtqError(
                f"dynamic_axes names {named}, part of a nested example input ({type(value).__name__}).",
                "make each example input with dynamic axes a single tensor.",
            )
        specs.append(_axes_spec(named[0], dynamic_axes[named[0]], value.dim()) if named else None)
    outputs = {
        name: _axes_spec(name, axes, None) for name, axes in dynamic_axes.items() if name in output_names
    }
    shapes = tuple(specs) if args else dict(zip(kwargs, specs, strict=True))
    return shapes, outputs


def _axes_spec(name: str, axes: Any, rank: int | None) -> dict[int, str]:
    """``{axis: dim name}`` for one input or output; input axes are checked against `rank`."""
    if isinstance(axes, Mapping):
        spec = dict(axes)
    elif isinstance(axes, Sequence) and not isinstance(axes, str):
        spec = {axis: f"{name}_dim{axis}" for axis in axes}
    else:
        raise TrtqError(f"dynamic_axes[{name!r}] is {axes!r}.", "use {axis: 'dim_name'} or [axis, ...].")
    result = {}
    for axis, dim in spec.items():
        if isinstance(axis, bool) or not isinstance(axis, int) or not isinstance(dim, str) or not dim:
            raise TrtqError(f"dynamic_axes[{name!r}] has entry {axis!r}: {dim!r}.", "use {axis: 'dim_name'}.")
        if rank is not None and not -rank <= axis < rank:
            raise TrtqError(
                f"dynamic_axes[{name!r}] names axis {axis} of a rank-{rank} input.", "fix the axis."
            )
        result[axis % rank if rank else axis] = dim
    return result


def _torch_export(
    model: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_shapes: Any,
    opset: int,
) -> onnx.ModelProto:
    """Run torch's dynamo exporter without its optimizer; failures become a `TrtqError`."""
    import torch

    with _eval_mode(model), _ModuleTracker(model) as tracker, _quiet_torch_warnings():
        try:
            program = torch.onnx.export(
                model,
                args,
                None,
                kwargs=kwargs or None,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=False,
                verbose=False,
            )
        except Exception as exc:
            raise _export_error(model, exc, tracker.innermost) from exc
    return program.model_proto


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's own training flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


# torch loggers that speak on every export about things trtq users cannot act on
# ("torchvision is not installed. Skipping torchvision::nms" and the like).
_NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration",)


@contextlib.contextmanager
def _quiet_torch_warnings() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # Two inputs sharing one symbol (batch of ids and mask): `_check_input_axes` reports it.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class _ModuleTracker:
    """Records which submodules are running, so a failure can name the innermost one."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._stack: list[tuple[str, str]] = []
        self._handles: list[Any] = []

    @property
    def innermost(self) -> tuple[str, str] | None:
        """``(qualified name, class name)`` of the innermost module that did not return."""
        return self._stack[-1] if self._stack else None

    def __enter__(self) -> _ModuleTracker:
        for name, module in self._model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook()))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre_hook(self, name: str) -> Any:
        import torch

        def hook(module: torch.nn.Module, args: Any) -> None:
            if torch.compiler.is_dynamo_compiling():  # torch.export's strict retry: keep the record
                return
            if not name:
                self._stack.clear()
            self._stack.append((name, type(module).__name__))

        return hook

    def _post_hook(self) -> Any:
        import torch

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not torch.compiler.is_dynamo_compiling() and self._stack:
                self._stack.pop()

        return hook


def _export_error(model: torch.nn.Module, exc: Exception, running: tuple[str, str] | None) -> TrtqError:
    """A `TrtqError` naming the submodule where torch's exporter failed and the root cause."""
    translating = _module_of_failed_node(model, exc)
    where = translating or running
    cause = _root_cause(exc)
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if where is None:
        place = ""
    elif where[0]:
        place = f" in submodule `{where[0]}` ({where[1]})"
    else:
        place = f" in the top-level forward ({where[1]})"
    if translating:
        fix = "replace that op in the submodule with ops torch.onnx can translate to ONNX."
    else:
        fix = (
            "check that the model runs on example_inputs, then make that code traceable by "
            "torch.export: no Python branches or .item()/.numpy() on tensor values (use torch.where "
            "or torch.cond)."
        )
    return TrtqError(
        f"torch.onnx could not export {type(model).__name__}{place}: {type(cause).__name__}: {detail}", fix
    )


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _module_of_failed_node(model: torch.nn.Module, exc: BaseException) -> tuple[str, str] | None:
    """The module that owns the FX node torch was translating when it failed, if any.

    ONNX translation runs after tracing, so the module hooks have all returned by then; the FX
    node being translated (a local of torch's translation frames) records its module stack.
    """
    import torch

    modules = dict(model.named_modules())
    error: BaseException | None = exc
    while error is not None:
        tb = error.__traceback__
        while tb is not None:
            node = tb.tb_frame.f_locals.get("node")
            stack = node.meta.get("nn_module_stack") if isinstance(node, torch.fx.Node) else None
            if stack:
                qualname, cls = list(stack.values())[-1]
                module = modules.get(qualname)
                return qualname, type(module).__name__ if module is not None else str(cls).rsplit(".", 1)[-1]
            tb = tb.tb_next
        error = error.__cause__
    return None


def _check_exported(
    proto: onnx.ModelProto, input_names: Sequence[str] | None, output_names: Sequence[str] | None, opset: int
) -> None:
    """The graph has the names and opset asked for."""
    outputs = [o.name for o in proto.graph.output]
    if output_names is not None and len(output_names) > len(outputs):
        raise TrtqError(
            f"output_names has {len(output_names)} names but the model returns {len(outputs)} tensors.",
            "give at most one name per output tensor.",
        )
    inputs = [i.name for i in proto.graph.input]
    given_in, given_out = list(input_names or ()), list(output_names or ())
    if inputs[: len(given_in)] != given_in or outputs[: len(given_out)] != given_out:
        raise RuntimeError(f"torch.onnx named the graph's inputs {inputs} and outputs {outputs}")
    version = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if version != opset:
        raise TrtqError(
            f"torch.onnx wrote opset {version}, not the {opset} asked for.",
            f"pass opset={version} or another opset torch.onnx can convert to.",
        )


def _check_input_axes(proto: onnx.ModelProto, dynamic_axes: DynamicAxes, output_names: Sequence[str]) -> None:
    """Every input axis asked to be dynamic is; a name torch merged into another is logged."""
    inputs = {i.name: i.type.tensor_type.shape.dim for i in proto.graph.input}
    missing = sorted(set(dynamic_axes) - set(inputs) - set(output_names))
    if missing:
        raise TrtqError(
            f"dynamic_axes names {missing}, but the graph's inputs are {list(inputs)}.",
            "pass input_names and key dynamic_axes by them.",
        )
    for name, dims in inputs.items():
        if name not in dynamic_axes:
            continue
        for axis, dim_name in _axes_spec(name, dynamic_axes[name], len(dims)).items():
            dim = dims[axis]
            if not dim.dim_param:
                raise TrtqError(
                    f"input {name!r} axis {axis} was fixed to {dim.dim_value} by torch.export: the "
                    "model's code specialises that size.",
                    "drop that axis from dynamic_axes, or remove the size-dependent code from the model.",
                )
            if dim.dim_param != dim_name:
                logger.warning(
                    "input %r axis %d is named %r, not %r: torch found it equal to that axis",
                    name,
                    axis,
                    dim.dim_param,
                    dim_name,
                )


def _optimize(proto: onnx.ModelProto, fold_batchnorm: bool) -> onnx.ModelProto:
    """Fold constants, then (when asked) BatchNormalization, then run onnxscript's cleanups."""
    import onnxscript.optimizer

    onnxscript.optimizer.fold_constants(proto)
    onnxscript.optimizer.remove_unused_nodes(proto)
    if not fold_batchnorm:
        return proto
    result = fold_batchnorm_pass(proto, PassContext())
    for skipped in result.report["skipped"]:
        logger.warning("BatchNormalization %s not folded: %s", skipped["node"], skipped["reason"])
    # onnxscript's rewrite set also fuses Pad into Conv, merges Clips and drops no-op casts.
    return onnxscript.optimizer.optimize(result.model)


def _name_output_axes(proto: onnx.ModelProto, output_axes: dict[str, dict[int, str]]) -> None:
    """Give the output axes listed in ``dynamic_axes`` their names; a static one is an error."""
    input_dims = {d.dim_param for i in proto.graph.input for d in i.type.tensor_type.shape.dim}
    outputs = {o.name: o for o in proto.graph.output}
    for name, axes in output_axes.items():
        dims = outputs[name].type.tensor_type.shape.dim
        for axis, dim_name in axes.items():
            if not -len(dims) <= axis < len(dims):
                raise TrtqError(f"output {name!r} has rank {len(dims)}, no axis {axis}.", "fix dynamic_axes.")
            dim = dims[axis]
            if not dim.dim_param:
                raise TrtqError(
                    f"output {name!r} axis {axis} has fixed size {dim.dim_value} in the exported graph.",
                    "make the inputs it depends on dynamic, or drop it from dynamic_axes.",
                )
            if dim.dim_param not in input_dims:
                _rename_dim(proto, dim.dim_param, dim_name)
            dim.dim_param = dim_name


def _rename_dim(proto: onnx.ModelProto, old: str, new: str) -> None:
    for info in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new


def _strip_debug_metadata(proto: onnx.ModelProto) -> None:
    """Drop node metadata that records source paths (kept: module names and classes)."""
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key not in _DEBUG_METADATA]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
