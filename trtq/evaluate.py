"""Fidelity of a quantized graph to its FP32 original: SQNR, cosine, top-1, per output and per layer."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from trtq._io import load_model, write_json
from trtq._ort import make_session, session_device
from trtq._shapes import tensor_types
from trtq.calibrators.data import Batch, BatchStream, InputSpec, model_inputs
from trtq.engine.run import EngineRunner, is_engine
from trtq.errors import TrtqError
from trtq.metrics import SQNR_CAP_DB, ErrorSums, SampleSums, finite_pair

__all__ = [
    "SQNR_CAP_DB",
    "CompareReport",
    "DegradedCompareReport",
    "OutputMetrics",
    "TensorMetrics",
    "compare",
    "compare_degraded",
]

logger = logging.getLogger(__name__)

_NAME_WIDTH = 48
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
_SAME_MODEL_FIX = "compare a quantized model with the FP32 model it was made from."


@dataclass(frozen=True)
class OutputMetrics:
    """How closely one graph output of the candidate follows the reference, over all samples.

    Attributes:
        name: the graph output.
        sqnr_db: 10·log10(Σref² / Σ(ref−cand)²), capped at ±`SQNR_CAP_DB` (+cap: identical).
        cosine: mean over samples of the cosine similarity of the flattened sample.
        max_abs_error: the largest |ref − cand|.
        top1_agreement: fraction of samples whose argmax over the last axis agrees, for outputs that
            look like class scores (rank 2, float, last dim ≥ 2); None for other outputs.
        excluded: reference values that are not finite (masks); left out of every metric.
        nonfinite: candidate values that are NaN/inf where the reference is finite; any makes
            `sqnr_db` -`SQNR_CAP_DB`, and they are left out of the other metrics.
    """

    name: str
    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None
    excluded: int = 0
    nonfinite: int = 0


@dataclass(frozen=True)
class TensorMetrics:
    """The error at one quantized activation: a QuantizeLinear of the candidate and its DequantizeLinear.

    Attributes:
        name: the quantized FP32 tensor (the Q input), present under this name in both graphs.
        dequantized: the candidate's DequantizeLinear output.
        precision: the quantized element type (int8, uint8, float8e4m3fn, ...).
        consumers: the candidate nodes that read the dequantized tensor, as "OpType name".
        sqnr_db: DQ output vs the reference's FP32 tensor: the error accumulated up to this layer.
        local_sqnr_db: DQ output vs the Q input within the candidate: the noise of this Q/DQ alone.
        excluded: reference values that are not finite; left out.
        nonfinite: dequantized values that are NaN/inf where the reference is finite.
    """

    name: str
    dequantized: str
    precision: str
    consumers: tuple[str, ...]
    sqnr_db: float
    local_sqnr_db: float
    excluded: int = 0
    nonfinite: int = 0


@dataclass
class CompareReport:
    """What `compare` measured: graph outputs, quantized tensors (worst SQNR first), samples seen."""

    outputs: list[OutputMetrics]
    tensors: list[TensorMetrics]
    samples: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (every number finite; SQNR of identical tensors is `SQNR_CAP_DB`)."""
        return {
            "samples": self.samples,
            "sqnr_cap_db": SQNR_CAP_DB,
            "outputs": [dataclasses.asdict(o) for o in self.outputs],
            "tensors": [{**dataclasses.asdict(t), "consumers": list(t.consumers)} for t in self.tensors],
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `to_dict()` as JSON, atomically."""
        return write_json(self.to_dict(), path)

    def format(self, top: int = 20) -> str:
        """A fixed-width table: the outputs, then the `top` quantized tensors with the worst SQNR."""
        lines = [
            f"trtq compare: {self.samples} samples, {len(self.outputs)} outputs, "
            f"{len(self.tensors)} quantized tensors (SQNR in dB, higher is better)"
        ]
        header = ["output", "SQNR dB", "cosine", "max abs err", "top-1"]
        lines += _table(header, [_output_row(o) for o in self.outputs], "<>>>>")
        shown = self.tensors[: max(top, 0)]
        if shown:
            lines += ["", f"worst {len(shown)} of {len(self.tensors)} quantized tensors by SQNR vs FP32 "
                      "(local: the noise of that Q/DQ alone)"]
            header = ["tensor", "type", "SQNR dB", "local dB", "read by"]
            lines += _table(header, [_tensor_row(t) for t in shown], "<<>><")
        return "\n".join(lines + _notes([*self.outputs, *shown]))


def compare(
    reference: onnx.ModelProto | str | os.PathLike[str],
    candidate: onnx.ModelProto | str | os.PathLike[str],
    data: Any,
    *,
    batch_size: int = 8,
    max_samples: int | None = None,
    per_tensor: bool = True,
    device: str | None = None,
) -> CompareReport:
    """Run both graphs in ONNX Runtime CPU on the same batches and measure how far the candidate strays.

    Metrics stream: each batch is reduced to sums and dropped, so memory does not grow with the
    number of samples; it holds one batch of every compared tensor (per quantized activation: the
    reference tensor, the Q input and the DQ output), so lower `batch_size` for large models.
    Both graphs run with `make_session(exact_qdq=True)`: activation Q/DQ run exactly as written and
    weight DQs are constant-folded, so the numbers depend neither on the batch size nor on the
    tensors exposed per layer. (ORT's full optimisation would swap in its own INT8 / INT4 kernels,
    e.g. MatMulNBits, which quantizes activations to int8, and TensorRT runs neither.)

    Args:
        reference: the FP32 model (ModelProto or path).
        candidate: the quantized model (ModelProto or path), with the same inputs and outputs.
        data: evaluation data: an .npz path, a dict of arrays, an iterable of batches, or a
            CalibrationDataReader (see `trtq.calibrators.data`).
        batch_size: samples per batch when trtq slices arrays itself.
        max_samples: stop after this many samples (None: all).
        per_tensor: also measure every quantized activation (the candidate's Q/DQ pairs whose input
            tensor exists in the reference); weights are not part of this.
        device: where ONNX Runtime runs the ONNX graphs: cuda | cpu (None: cuda when onnxruntime-gpu's
            CUDA execution provider is available, see `trtq._ort.providers`).

    A candidate path ending in .engine / .plan / .trt is a TensorRT engine: it runs through
    Polygraphy's TrtRunner (`trtq.engine.run.EngineRunner`) and only the graph outputs are compared.

    Returns:
        A `CompareReport`; its `tensors` are sorted worst SQNR first.

    Raises:
        TrtqError: a model cannot be read or run, the models' inputs or outputs differ, or the data
            does not match the inputs.
    """
    _check_counts(batch_size, max_samples)
    with session_device(device):
        ref = _load(reference, "reference")
        if is_engine(candidate):  # a TensorRT engine: graph outputs only (an engine exposes no Q/DQ tensors)
            cand_run: Any = EngineRunner(candidate)
            inputs = [_merge_input(r, c) for r, c in _paired(model_inputs(ref), cand_run.inputs, "inputs")]
            outputs = [r for r, _ in _paired([o.name for o in ref.graph.output], cand_run.outputs, "outputs")]
            probes = []
        else:
            cand = _load(candidate, "candidate")
            inputs = _common_inputs(ref, cand)
            outputs = _common_outputs(ref, cand)
            probes = _find_probes(ref, cand) if per_tensor else []
            cand_run = _Runner(cand, "candidate", [n for p in probes for n in (p.name, p.dequantized)])
        ref_run = _Runner(ref, "reference", [p.name for p in probes])
    acc = _Accumulator(outputs, probes)
    stream = BatchStream(data, inputs, batch_size=batch_size, max_samples=max_samples, what="evaluation")
    try:
        for batch in stream:
            acc.add(batch, ref_run(batch), cand_run(batch))
    finally:
        stream.close()
        getattr(cand_run, "close", lambda: None)()
    report = acc.report()
    logger.info("compare: %d samples, %d outputs, %d quantized tensors", report.samples, len(outputs),
                len(report.tensors))
    return report


@dataclass
class DegradedCompareReport:
    """`compare` on the clean evaluation images and on each degraded copy of them (one degradation each)."""

    reports: dict[str, CompareReport]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: evaluation set ("clean", "noise:mild", ...) -> `CompareReport.to_dict()`."""
        return {"sets": {name: r.to_dict() for name, r in self.reports.items()}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write `to_dict()` as JSON, atomically."""
        return write_json(self.to_dict(), path)

    def format(self) -> str:
        """One row per evaluation set and graph output: the quantized model vs FP32 on those inputs."""
        first = next(iter(self.reports.values()))
        lines = [f"trtq compare per degradation: {first.samples} samples per set, quantized vs FP32 "
                 "on the same (degraded) inputs (SQNR in dB, higher is better)"]
        rows = [[name, *_output_row(o)] for name, r in self.reports.items() for o in r.outputs]
        lines += _table(["set", "output", "SQNR dB", "cosine", "max abs err", "top-1"], rows, "<<>>>>")
        return "\n".join(lines)


def compare_degraded(
    reference: onnx.ModelProto | str | os.PathLike[str],
    candidate: onnx.ModelProto | str | os.PathLike[str],
    data: Any,
    degradations: tuple[str, ...] | list[str] = ("noise", "blur", "contrast", "jpeg"),
    *,
    levels: str = "mild",
    seed: int = 0,
    batch_size: int = 8,
    max_samples: int | None = None,
    per_tensor: bool = False,
    progress: bool = True,
    device: str | None = None,
) -> DegradedCompareReport:
    """`compare` on `data` clean and under each degradation alone: robustness, FP32 vs quantized.

    Args:
        reference, candidate, batch_size, max_samples, per_tensor, device: as for `compare`.
        data: an image source (`trtq.calibrators.images.ImageFolder` or `ImageList`): degradations
            apply to pixels before the source's preprocessing.
        degradations: names (or name:level) from `trtq.calibrators.degrade.DEGRADATIONS`.
        levels: mild | strong | mixed (both levels, as two sets).
        seed: seed of the degradations' draws (per image, from the seed and the image's index).

    Returns:
        A `DegradedCompareReport` with one `CompareReport` per set: "clean", then "noise:mild", ...

    Raises:
        TrtqError: `data` is not an image source, an unknown degradation or level, or what `compare` raises.
    """
    from tqdm import tqdm

    from trtq.calibrators.degrade import evaluation_sets

    ref = _load(reference, "reference")
    cand = candidate if is_engine(candidate) else _load(candidate, "candidate")
    sets = evaluation_sets(data, tuple(degradations), levels=levels, seed=seed)
    reports = {}
    for name, source in tqdm(sets.items(), desc="compare per degradation", unit="set", disable=not progress):
        reports[name] = compare(ref, cand, source, batch_size=batch_size, max_samples=max_samples,
                                per_tensor=per_tensor, device=device)
    return DegradedCompareReport(reports)


# --- inputs -------------------------------------------------------------------------------------


def _check_counts(batch_size: int, max_samples: int | None) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TrtqError(f"batch size {batch_size!r} is not a positive integer.", "pass 1 or more.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise TrtqError(f"max samples {max_samples!r} is not a positive integer.", "pass 1 or more, or None.")


def _load(model: Any, role: str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise TrtqError(
        f"the {role} model is a {type(model).__name__}, not an ONNX model.",
        "pass an onnx.ModelProto or the path of an .onnx file.",
    )


def _common_inputs(ref: onnx.ModelProto, cand: onnx.ModelProto) -> list[InputSpec]:
    """The inputs both models take, with each dimension that either model fixes."""
    r = {s.name: s for s in model_inputs(ref)}
    c = {s.name: s for s in model_inputs(cand)}
    if set(r) != set(c):
        raise TrtqError(
            f"the models take different inputs: reference {sorted(r)}, candidate {sorted(c)}.",
            _SAME_MODEL_FIX,
        )
    return [_merge_input(r[name], c[name]) for name in r]


def _paired(ref: list[Any], cand: list[Any], what: str) -> list[tuple[Any, Any]]:
    """Reference and engine items (InputSpecs or names) matched by name; TrtqError when the sets differ."""
    def key(x: Any) -> str:
        return x if isinstance(x, str) else x.name

    by_name = {key(c): c for c in cand}
    if {key(r) for r in ref} != set(by_name):
        raise TrtqError(f"the ONNX model and the engine have different {what}: ONNX {sorted(key(r) for r in ref)}, "
                        f"engine {sorted(by_name)}.", "compare an engine with the ONNX it was built from.")
    return [(r, by_name[key(r)]) for r in ref]


def _merge_input(a: InputSpec, b: InputSpec) -> InputSpec:
    clash = a.dtype != b.dtype or len(a.shape) != len(b.shape)
    dims = list(zip(a.shape, b.shape, strict=False))  # ranks are checked just above
    if clash or any(x is not None and y is not None and x != y for x, y in dims):
        raise TrtqError(
            f"input {a.name!r} differs: reference {a.describe()}, candidate {b.describe()}.", _SAME_MODEL_FIX
        )
    return InputSpec(a.name, a.dtype, tuple(x if x is not None else y for x, y in dims))


def _common_outputs(ref: onnx.ModelProto, cand: onnx.ModelProto) -> list[str]:
    r = [o.name for o in ref.graph.output]
    c = [o.name for o in cand.graph.output]
    if set(r) != set(c):
        raise TrtqError(
            f"the models have different outputs: reference {sorted(r)}, candidate {sorted(c)}.",
            _SAME_MODEL_FIX,
        )
    return r


# --- finding the quantized activations ----------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    """A quantized activation: the Q input (named alike in both graphs) and the candidate's DQ output."""

    name: str
    dequantized: str
    precision: str
    consumers: tuple[str, ...]


def _find_probes(ref: onnx.ModelProto, cand: onnx.ModelProto) -> list[_Probe]:
    """Every Q of the candidate on a non-constant tensor the reference also computes, with its DQ."""
    known = _activations(ref)
    constants = _constants(cand)
    readers = _readers(cand.graph)
    types = tensor_types(cand)
    probes = []
    for q in cand.graph.node:
        if not _is_op(q, "QuantizeLinear") or q.input[0] in constants or q.input[0] not in known:
            continue
        dq = next((n for n in readers.get(q.output[0], []) if _is_op(n, "DequantizeLinear")), None)
        if dq is None:
            logger.debug("QuantizeLinear %s has no DequantizeLinear reader; skipped", q.name)
            continue
        consumers = tuple(f"{n.op_type} {n.name}".strip() for n in readers.get(dq.output[0], []))
        probes.append(_Probe(q.input[0], dq.output[0], _precision(q, types), consumers))
    return probes


def _activations(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors a graph computes or takes as data (node outputs and graph inputs)."""
    names = {o for n in model.graph.node for o in n.output if o} | {i.name for i in model.graph.input}
    return names - {init.name for init in model.graph.initializer}


def _constants(model: onnx.ModelProto) -> set[str]:
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return consts | {init.name for init in model.graph.initializer}


def _readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            readers.setdefault(name, []).append(node)
    return readers


def _is_op(node: onnx.NodeProto, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in _QDQ_DOMAINS


def _precision(q: onnx.NodeProto, types: dict[str, int]) -> str:
    """The Q's output type: `output_dtype`, else the zero point's type, else uint8 (the ONNX default)."""
    elem = next((a.i for a in q.attribute if a.name == "output_dtype" and a.i), None)
    if elem is None and len(q.input) > 2 and q.input[2]:
        elem = types.get(q.input[2])
    return onnx.TensorProto.DataType.Name(elem or onnx.TensorProto.UINT8).lower()


# --- running ------------------------------------------------------------------------------------


class _Runner:
    """One ORT session returning the graph outputs and the requested tensors (and the feed) by name."""

    def __init__(self, model: onnx.ModelProto, role: str, tensors: list[str]) -> None:
        graph_inputs = {i.name for i in model.graph.input}
        extra = [t for t in dict.fromkeys(tensors) if t not in graph_inputs]
        self._role = role
        try:
            self._session = make_session(model, outputs=extra, exact_qdq=True)
        except Exception as exc:  # ORT raises its own exception types for unloadable graphs
            raise TrtqError(
                f"ONNX Runtime cannot load the {role} model: {_first_line(exc)}",
                "run `trtq check` on it, or load it in onnxruntime to see which node fails.",
            ) from exc
        self._names = [o.name for o in self._session.get_outputs()]

    def __call__(self, batch: Batch) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._names, batch)
        except Exception as exc:
            raise TrtqError(
                f"ONNX Runtime failed to run the {self._role} model on an evaluation batch: "
                f"{_first_line(exc)}",
                "give the data the shapes the model was exported for.",
            ) from exc
        return {**batch, **dict(zip(self._names, values, strict=True))}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- streaming metrics --------------------------------------------------------------------------


class _OutputSums:
    """Everything `OutputMetrics` needs about one graph output, accumulated batch by batch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors = ErrorSums()
        self.samples = SampleSums()

    def add(self, ref: np.ndarray, cand: np.ndarray, samples: int) -> None:
        if ref.shape != cand.shape:
            raise TrtqError(
                f"output {self.name!r} is {ref.shape} in the reference but {cand.shape} in the candidate.",
                _SAME_MODEL_FIX,
            )
        pair = finite_pair(ref, cand)
        self.errors.add(pair)
        self.samples.add(pair, ref, cand, samples)

    def metrics(self) -> OutputMetrics:
        e, s = self.errors, self.samples
        return OutputMetrics(self.name, e.sqnr_db(), s.cosine(), e.max_abs, s.top1(), e.excluded, e.nonfinite)


class _TensorSums:
    """Cumulative (vs the reference) and local (vs the Q input) error of one quantized activation."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe
        self.cumulative = ErrorSums()
        self.local = ErrorSums()
        self.skipped = False

    def add(self, ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> None:
        p = self.probe
        fp32, q_in, dq = ref[p.name], cand[p.name], cand[p.dequantized]
        if fp32.shape != dq.shape or q_in.shape != dq.shape:
            if not self.skipped:
                logger.warning("tensor %s: shape %s in the reference, %s dequantized; not compared",
                               p.name, fp32.shape, dq.shape)
            self.skipped = True
        if not self.skipped:
            self.cumulative.add(finite_pair(fp32, dq))
            self.local.add(finite_pair(q_in, dq))

    def metrics(self) -> TensorMetrics:
        p, cum = self.probe, self.cumulative
        return TensorMetrics(p.name, p.dequantized, p.precision, p.consumers, cum.sqnr_db(),
                             self.local.sqnr_db(), cum.excluded, cum.nonfinite)


class _Accumulator:
    """Reduces each batch of both graphs' tensors to the sums behind the report, then drops it."""

    def __init__(self, outputs: list[str], probes: list[_Probe]) -> None:
        self._outputs = [_OutputSums(name) for name in outputs]
        self._tensors = [_TensorSums(p) for p in probes]
        self.samples = 0

    def add(self, batch: Batch, ref: dict[str, np.ndarray], cand: dict[str, np.ndarray]) -> None:
        first = next(iter(batch.values()))
        n = first.shape[0] if first.ndim else 1
        self.samples += n
        for out in self._outputs:
            out.add(ref[out.name], cand[out.name], n)
        for tensor in self._tensors:
            tensor.add(ref, cand)

    def report(self) -> CompareReport:
        empty = [o.name for o in self._outputs if o.errors.compared == 0 and o.errors.excluded]
        if empty:
            raise TrtqError(
                f"no finite value was compared for output(s) {', '.join(empty)}: over {self.samples} samples every "
                "reference value is NaN or infinite, so there is nothing to measure.",
                "check the evaluation data: the FP32 model gives no finite output on it (NaN or inf inputs?).",
            )
        tensors = [t.metrics() for t in self._tensors if not t.skipped]
        tensors.sort(key=lambda t: (t.sqnr_db, t.local_sqnr_db, t.name, t.dequantized))
        return CompareReport([o.metrics() for o in self._outputs], tensors, self.samples)


# --- formatting ---------------------------------------------------------------------------------


def _db(value: float) -> str:
    if value >= SQNR_CAP_DB:
        return f">={SQNR_CAP_DB:.0f}"
    if value <= -SQNR_CAP_DB:
        return f"<=-{SQNR_CAP_DB:.0f}"
    return f"{value:.2f}"


def _short(name: str) -> str:
    return name if len(name) <= _NAME_WIDTH else "..." + name[-(_NAME_WIDTH - 3):]


def _output_row(o: OutputMetrics) -> list[str]:
    top1 = "-" if o.top1_agreement is None else f"{o.top1_agreement:.4f}"
    return [_short(o.name), _db(o.sqnr_db), f"{o.cosine:.6f}", f"{o.max_abs_error:.4g}", top1]


def _tensor_row(t: TensorMetrics) -> list[str]:
    reader = t.consumers[0] if t.consumers else "-"
    if len(t.consumers) > 1:
        reader += f" (+{len(t.consumers) - 1})"
    return [_short(t.name), t.precision, _db(t.sqnr_db), _db(t.local_sqnr_db), _short(reader)]


def _table(headers: list[str], rows: list[list[str]], align: str) -> list[str]:
    """Fixed-width lines; `align` holds one "<" (text) or ">" (number) per column."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _notes(shown: list[OutputMetrics | TensorMetrics]) -> list[str]:
    notes = []
    for m in shown:
        if m.nonfinite:
            notes.append(f"note: {m.name}: {m.nonfinite} candidate values are NaN/inf where the reference "
                         "is finite (SQNR set to the floor).")
        if m.excluded:
            notes.append(f"note: {m.name}: {m.excluded} reference values are not finite and were left out.")
    return [""] + notes if notes else []
