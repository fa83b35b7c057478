"""Sensitivity analysis and fallback: rank the quantized layers by the output error each causes alone.

Unit: one weighted node (Conv, ConvTranspose, Gemm, MatMul) with every Q/DQ the plan puts on its
inputs (activations, weights) and, for a conv that TensorRT fuses with a residual Add, the Add's
quantized residual. That is what TensorRT runs in one precision (a layer with a float input is not
an INT8 layer), what `--exclude` names, and what MACs are counted on; a per-tensor unit would
measure configurations TensorRT never runs (one input of a conv quantized) and would tie together
the layers that share one input (the q/k/v projections).

Sensitivity of unit u on the first N calibration samples (outputs y, FP32 reference y_ref):
    SQNR_u = 10·log10(Σ y_ref² / Σ (y_ref − y_u)²),   y_u: only u quantized, every other unit FP32;
the worst graph output counts. Noise powers of independent units add, so each unit's share of the
summed noise  10^(−SQNR_u/10) / Σ_v 10^(−SQNR_v/10)  says how much of the all-quantized error it
explains. One gated graph serves every measurement: each unit's quantized inputs pass through
`Where(gate_u, dequantized, original)` with a boolean graph input per unit, so no graph is rebuilt
per unit or per fallback step. With only u quantized, everything before u computes FP32 values, so
the reference run caches the tensors crossing a few cuts and u's measurement runs only the graph
after the last cut before u (results are identical to a full run; ~1.6x faster on the bench models).

Fallback keeps units in floating point, most sensitive first: `budget` units, or as many as it takes
(at most `max_trials` measured steps) for the output SQNR on the same samples to reach `target_sqnr`.

Automatic fallback (`auto=True`, trtq's default for INT8/FP8 with calibration data): the fewest
units that bring the output to the point of diminishing returns within a MAC budget. Units are
taken most sensitive first; a unit whose MACs would push the float share over `max_float_macs`
(a fraction of all weighted-op MACs) is passed over; the walk stops at the first unit whose
removal is predicted to gain less than `min_gain_db` (removing noise share ``σ`` of the summed noise
gains ``−10·log10(1 − σ)`` dB; the ranking is by noise share, so every later unit gains less), and a
unit is kept only if its measured gain is at least `min_gain_db` too. When the all-quantized output
already reaches `AUTO_ABOVE_DB` (30 dB) on the samples, nothing is ranked (one measured run, no
per-unit cost). The sidecar's `decisions` say for each unit looked at why it was kept or passed over.

Screening (automatic fallback only): the automatic walk keeps a unit only if its noise share is at least
``σ_min = 1 − 10^(−min_gain_db/10)`` (0.5 dB: 10.9 %), so most units need no measurement of their own.
With noise powers adding, a group G of units quantized together has noise ``N(G) = Σ_{u∈G} N(u) ≥ N(u)``:
when ``N(G) < margin·σ_min·N_all`` (``N_all`` the all-quantized noise, ``margin`` = `_SCREEN_MARGIN`
= 1/2 for the additivity's slack), no member can be kept and the group is not split. Groups start as
`_SEGMENTS` runs of units consecutive in graph order and are halved until they fall under that bound or
hold one unit (measured alone, as in the full ranking); a group of units that the MAC budget
excludes anyway is not split either. Shares are then taken over the partition's summed noise (the same
sum as the full ranking's, up to additivity). With a few sensitive units among many this measures
O(k·log n) groups instead of n units, most of them short graph suffixes (EfficientNet-Lite0: 50 units
-> about 20 runs). The sidecar lists the units measured alone in `units` and the groups in `screened`.
`--fallback-budget` and `--target-sqnr` rank every unit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper
from tqdm.auto import tqdm

from trtq._ort import make_session
from trtq.calibrators.data import Batch, model_inputs
from trtq.errors import TrtqError
from trtq.exporter.macs import count_macs
from trtq.exporter.placement import QuantPlan, WeightSlot
from trtq.exporter.qdq import insert_qdq
from trtq.exporter.weights import QuantizedWeight
from trtq.metrics import ErrorSums, finite_pair
from trtq.precision import DEFAULT_BLOCK_SIZE

__all__ = [
    "AUTO_ABOVE_DB",
    "DEFAULT_MAX_FLOAT_MACS",
    "DEFAULT_MAX_TRIALS",
    "DEFAULT_MIN_GAIN_DB",
    "DEFAULT_SAMPLES",
    "FallbackDecision",
    "FallbackResult",
    "FallbackStep",
    "ScreenedGroup",
    "UnitSensitivity",
    "sensitivity_fallback",
    "unit_owners",
    "without_units",
]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = 16
DEFAULT_MAX_TRIALS = 32
# automatic fallback: the MAC share that may stay in float, and the least gain (dB) a unit must bring
DEFAULT_MAX_FLOAT_MACS = 0.05
DEFAULT_MIN_GAIN_DB = 0.5
AUTO_ABOVE_DB = 30.0  # automatic fallback: an all-quantized output at least this close ranks nothing
_CHUNK = 4  # samples per ONNX Runtime run when the batch axis is dynamic (memory: activations of 4)
_SEGMENTS = 8  # graph suffixes a single-unit measurement may start from
_GATE = "trtq_gate_"
_SCREEN_MARGIN = 0.5  # screening: a group under this fraction of the keep threshold is not split


@dataclass(frozen=True)
class UnitSensitivity:
    """How much one quantized unit alone degrades the graph output.

    Attributes:
        unit: the weighted node whose quantized inputs form the unit.
        op: its op type.
        sqnr_db: output SQNR vs FP32 with only this unit quantized (its drop from FP32's noiseless output).
        noise_share: this unit's share of the summed output noise power of all units.
        macs: multiply-accumulates per sample (batch 1; None: shape unknown).
        tensors: the quantized tensors the unit reads (activations, weights, a fused residual).
    """

    unit: str
    op: str
    sqnr_db: float
    noise_share: float
    macs: int | None
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class ScreenedGroup:
    """Automatic fallback's screening: units measured together and not split further (none can be kept).

    Attributes:
        units: the units, in graph order.
        sqnr_db: output SQNR vs FP32 with only these units quantized.
        noise_share: their summed share of the output noise.
        reason: why the group was not split.
    """

    units: tuple[str, ...]
    sqnr_db: float
    noise_share: float
    reason: str


@dataclass(frozen=True)
class FallbackStep:
    """One fallback step: the unit moved to floating point and the output SQNR after it."""

    unit: str
    sqnr_db: float


@dataclass(frozen=True)
class FallbackDecision:
    """Automatic fallback: one unit looked at, whether it was kept in float, and why."""

    unit: str
    kept: bool
    reason: str


@dataclass
class FallbackResult:
    """The fallback plan and what the analysis measured (most sensitive unit first).

    Attributes:
        plan: the quantization plan without the units kept in floating point.
        units: every unit's sensitivity, most sensitive first.
        kept_float: the units kept in floating point, in the order they fell back.
        steps: the measured steps (one per unit in `kept_float`).
        baseline_sqnr_db: output SQNR with every unit quantized.
        samples: calibration samples measured on.
        budget, target_sqnr: what was asked.
        macs: MACs per sample of every Conv/ConvTranspose/Gemm/MatMul (None: unknown).
        quantized: the units quantized before fallback.
        weights: every weight of the plan, quantized once (GPTQ included) for the gated graph: the
            final `insert_qdq(..., quantized=weights)` reuses them instead of quantizing again.
        auto: the automatic fallback chose (within `max_float_macs`, stopping at `min_gain_db`).
        max_float_macs, min_gain_db: the automatic fallback's MAC budget (fraction) and least gain.
        decisions: the automatic fallback's reasons, unit by unit.
        screened: the automatic fallback's groups of units not measured alone (module docstring).
        measurements: graph runs over the samples the analysis made (all quantized included).
        seconds: wall time of the analysis (not part of `to_dict`, so reports stay byte-identical).
    """

    plan: QuantPlan
    units: list[UnitSensitivity]
    kept_float: list[str]
    steps: list[FallbackStep]
    baseline_sqnr_db: float
    samples: int
    budget: int | None
    target_sqnr: float | None
    macs: dict[str, int | None] = field(default_factory=dict)
    quantized: list[str] = field(default_factory=list)
    weights: dict[WeightSlot, QuantizedWeight] = field(default_factory=dict, repr=False)
    auto: bool = False
    max_float_macs: float | None = None
    min_gain_db: float | None = None
    decisions: list[FallbackDecision] = field(default_factory=list)
    screened: list[ScreenedGroup] = field(default_factory=list)
    measurements: int = 0
    seconds: float = 0.0

    @property
    def final_sqnr_db(self) -> float:
        """Output SQNR after the fallback (the baseline when nothing fell back)."""
        return self.steps[-1].sqnr_db if self.steps else self.baseline_sqnr_db

    @property
    def reached(self) -> bool | None:
        """Whether the output SQNR reached `target_sqnr` (None when no target was set)."""
        return None if self.target_sqnr is None else self.final_sqnr_db >= self.target_sqnr

    def mac_fraction(self, units: Iterable[str]) -> float:
        """Fraction of all weighted-op MACs that `units` run (unknown MACs count as 0)."""
        total = sum(m or 0 for m in self.macs.values())
        return sum(self.macs.get(u) or 0 for u in set(units)) / total if total else 0.0

    @property
    def quantized_mac_fraction(self) -> float:
        """Fraction of MACs still quantized (INT8/FP8/INT4) after the fallback."""
        kept = set(self.kept_float)
        return self.mac_fraction(u for u in self.quantized if u not in kept)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict for the sidecar report."""
        return {
            "samples": self.samples, "budget": self.budget, "target_sqnr_db": self.target_sqnr,
            "auto": self.auto, "max_float_macs": self.max_float_macs, "min_gain_db": self.min_gain_db,
            "reached": self.reached,
            "baseline_sqnr_db": round(self.baseline_sqnr_db, 4),
            "final_sqnr_db": round(self.final_sqnr_db, 4),
            "kept_float": self.kept_float,
            "steps": [{"unit": s.unit, "sqnr_db": round(s.sqnr_db, 4)} for s in self.steps],
            "decisions": [{"unit": d.unit, "kept": d.kept, "reason": d.reason} for d in self.decisions],
            "total_macs": sum(m or 0 for m in self.macs.values()),
            "quantized_mac_fraction_before": round(self.mac_fraction(self.quantized), 6),
            "quantized_mac_fraction": round(self.quantized_mac_fraction, 6),
            "units": [{"unit": u.unit, "op": u.op, "sqnr_db": round(u.sqnr_db, 4),
                       "noise_share": round(u.noise_share, 6), "macs": u.macs, "tensors": list(u.tensors)}
                      for u in self.units],
            "screened": [{"units": list(g.units), "sqnr_db": round(g.sqnr_db, 4),
                          "noise_share": round(g.noise_share, 6), "reason": g.reason} for g in self.screened],
            "measurements": self.measurements,
        }

    def summary(self) -> str:
        """One line: what was kept in floating point, why, and what it bought."""
        kept = len(self.kept_float)
        why = ("automatic: the fewest most sensitive layers to diminishing returns within "
               f"{100 * (self.max_float_macs or 0):g}% of the MACs" if self.auto else
               f"target {self.target_sqnr:g} dB" if self.target_sqnr is not None else f"budget {self.budget}")
        if self.auto and not self.units and self.decisions:
            return f"fallback ({why}): none, {self.decisions[-1].reason}"
        return (f"fallback ({why}): {kept} layer{'s' * (kept != 1)} kept in floating point"
                + (f" ({', '.join(self.kept_float)})" if kept else "")
                + f", output SQNR {self.baseline_sqnr_db:.2f} -> {self.final_sqnr_db:.2f} dB on {self.samples} "
                f"calibration samples, {100 * self.quantized_mac_fraction:.1f}% of MACs quantized")

    def format(self, top: int = 10) -> str:
        """Lines for a terminal: the `top` most sensitive units, the steps, and the MAC fraction."""
        lines = [f"sensitivity on {self.samples} calibration samples (output SQNR with only that unit "
                 f"quantized; all quantized: {self.baseline_sqnr_db:.2f} dB)"]
        lines += [f"  {u.sqnr_db:8.2f} dB  {100 * u.noise_share:5.1f}% of noise  {u.op:<13} {u.unit}"
                  for u in self.units[:top]]
        if self.screened:
            count = sum(len(g.units) for g in self.screened)
            most = max(g.noise_share for g in self.screened)
            lines.append(f"  screened out: {count} units in {len(self.screened)} groups measured together "
                         f"(at most {100 * most:.1f}% of noise per group; {self.measurements} runs in all)")
        lines += [f"fallback {i + 1}: {s.unit} -> {s.sqnr_db:.2f} dB" for i, s in enumerate(self.steps)]
        if self.auto and self.decisions:
            last = self.decisions[-1]
            lines.append(f"stopped: {last.unit + ': ' if last.unit else ''}{last.reason}")
        lines.append(f"kept in floating point: {len(self.kept_float)} units; "
                     f"{100 * self.quantized_mac_fraction:.1f}% of MACs quantized "
                     f"(before: {100 * self.mac_fraction(self.quantized):.1f}%)")
        return "\n".join(lines)


def sensitivity_fallback(
    model: onnx.ModelProto,
    plan: QuantPlan,
    activation_amax: Mapping[str, float],
    batches: Iterable[Batch] | None,
    precision: str,
    *,
    opset: int,
    budget: int | None = None,
    target_sqnr: float | None = None,
    samples: int = DEFAULT_SAMPLES,
    max_trials: int = DEFAULT_MAX_TRIALS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    importance: Mapping[str, np.ndarray] | None = None,
    scale_type: str = "fp32",
    quantized: dict[WeightSlot, QuantizedWeight] | None = None,
    auto: bool = False,
    max_float_macs: float | None = None,
    min_gain_db: float = DEFAULT_MIN_GAIN_DB,
    progress: bool = True,
) -> FallbackResult:
    """Measure each unit's sensitivity and choose the units to keep in floating point.

    With neither `budget` nor `target_sqnr` nor `auto`, only the analysis runs and nothing falls
    back. With both, fallback stops at the target or after `budget` units, whichever comes first.
    `auto` (without budget or target) chooses as the module docstring says; `max_float_macs` (a
    fraction of the MACs; None: `DEFAULT_MAX_FLOAT_MACS` when automatic, no cap otherwise) also caps
    the units a budget or target may keep in float.

    Args:
        model: the FP32 model the plan was made for (after the graph passes).
        plan: the quantization plan (`plan_quantization`).
        activation_amax: calibrated amax per activation tensor of the plan.
        batches: the calibration batches; the first `samples` samples are used.
        precision: int8 | fp8 | int4, as given to `insert_qdq`.
        opset: the output opset, as given to `insert_qdq`.
        budget: keep this many of the most sensitive units in floating point.
        target_sqnr: fall back until the output SQNR (dB, worst output, on the samples) reaches this.
        samples: calibration samples to measure on.
        max_trials: at most this many fallback steps (each one a measured graph) for `target_sqnr`.
        block_size, importance: as given to `insert_qdq` (INT4).
        scale_type: as given to `insert_qdq` (the float type scales are stored in).
        quantized: weights already quantized (e.g. the rounded convs), used as they are.
        auto: choose the units automatically (module docstring) when neither budget nor target is set.
        max_float_macs: the share of MACs (0-1) the fallback may keep in float.
        min_gain_db: automatic fallback: the least output gain a unit must bring.
        progress: show progress bars.

    Returns:
        A `FallbackResult` whose `plan` leaves the chosen units unquantized.

    Raises:
        TrtqError: no calibration data, or an invalid budget, target or sample count.
    """
    _validate(batches, budget, target_sqnr, samples, max_trials)
    started = time.perf_counter()
    owners = unit_owners(model, plan)
    weights: dict[WeightSlot, QuantizedWeight] = dict(quantized or {})
    gated, gates = _gated_model(model, plan, activation_amax, precision, owners, block_size=block_size,
                                opset=opset, importance=importance, quantized=weights, scale_type=scale_type)
    subset = _subset(batches, samples, _dynamic_batch(model))
    scorer = _Scorer(gated, gates, subset)
    macs = count_macs(model, {k: v[:1] for k, v in subset[0].items()})
    baseline = scorer.sqnr_db(set(gates))
    auto = auto and budget is None and target_sqnr is None
    if auto and baseline >= AUTO_ABOVE_DB:  # close enough: no layer is worth ranking
        decision = FallbackDecision("", False, f"all quantized: {baseline:.2f} dB >= {AUTO_ABOVE_DB:g} dB, "
                                    "nothing to gain from floating-point layers")
        result = FallbackResult(plan, [], [], [], baseline, scorer.samples, budget, target_sqnr, macs,
                                list(gates), weights, auto=True,
                                max_float_macs=max_float_macs or DEFAULT_MAX_FLOAT_MACS,
                                min_gain_db=min_gain_db, decisions=[decision], measurements=scorer.runs,
                                seconds=time.perf_counter() - started)
        _log(result)
        return result
    if max_float_macs is None and auto:
        max_float_macs = DEFAULT_MAX_FLOAT_MACS
    share = _mac_shares(macs)
    screened: list[ScreenedGroup] = []
    if auto:
        units, screened = _screen(scorer, model, plan, owners, macs, baseline, share, max_float_macs,
                                  min_gain_db, progress)
    else:
        units = _rank(scorer, model, plan, owners, macs, progress)
    decisions: list[FallbackDecision] = []
    if auto:
        steps, decisions = _auto_fall_back(scorer, units, set(gates), baseline, share, max_float_macs,
                                           min_gain_db, max_trials)
        if screened and (not decisions or decisions[-1].kept):  # the walk ran out of units measured alone
            count = sum(len(g.units) for g in screened)
            decisions.append(FallbackDecision("", False, f"the other {count} layers were screened out in groups: "
                                              f"none carries enough of the noise to gain {min_gain_db:g} dB"))
    else:
        steps = _fall_back(scorer, [u.unit for u in units], baseline, budget, target_sqnr, max_trials, progress,
                           share=share, max_float=max_float_macs)
    kept = [s.unit for s in steps]
    result = FallbackResult(without_units(model, plan, kept, owners, units), units, kept, steps, baseline,
                            scorer.samples, budget, target_sqnr, macs, list(gates), weights, auto=auto,
                            max_float_macs=max_float_macs, min_gain_db=min_gain_db if auto else None,
                            decisions=decisions, screened=screened, measurements=scorer.runs,
                            seconds=time.perf_counter() - started)
    _log(result)
    return result


def _log(result: FallbackResult) -> None:
    if result.reached is False:
        logger.warning("fallback: output SQNR %.2f dB after %d units is below the target %.2f dB",
                       result.final_sqnr_db, len(result.steps), result.target_sqnr)
    logger.info("fallback: %d units kept in floating point, SQNR %.2f -> %.2f dB, %.1f%% of MACs quantized "
                "(%.1f s)", len(result.kept_float), result.baseline_sqnr_db, result.final_sqnr_db,
                100 * result.quantized_mac_fraction, result.seconds)


def _validate(batches: Any, budget: int | None, target: float | None, samples: int, max_trials: int) -> None:
    if batches is None:
        raise TrtqError("sensitivity analysis and fallback need calibration data.",
                        "pass --calib-data, or drop --fallback-budget / --target-sqnr.")
    if budget is not None and (not isinstance(budget, int) or budget < 0):
        raise TrtqError(f"fallback budget {budget!r} is not a non-negative integer.",
                        "pass e.g. --fallback-budget 3.")
    if target is not None and not math.isfinite(target):
        raise TrtqError(f"target SQNR {target!r} is not a finite number of dB.",
                        "pass e.g. --target-sqnr 25.")
    if samples < 1 or max_trials < 1:
        raise TrtqError(f"samples={samples}, max_trials={max_trials}: both must be at least 1.",
                        "pass positive counts.")


# --- units --------------------------------------------------------------------------------------


def unit_owners(model: onnx.ModelProto, plan: QuantPlan) -> dict[str, str]:
    """Map each consumer node of a planned Q/DQ to its unit: itself, or the conv fused with a residual Add."""
    owners = {n: n for n in plan.quantized_nodes}
    producers = {o: n.name for n in model.graph.node for o in n.output}
    nodes = {n.name: n for n in model.graph.node}
    for tensor, consumers in plan.activations.items():
        for name, index in consumers:
            if name in owners:
                continue
            other = [t for i, t in enumerate(nodes[name].input) if i != index]  # the fused conv's output
            fused = (producers[t] for t in other if producers.get(t) in plan.quantized_nodes)
            owners[name] = next(fused, name)
            logger.debug("residual %s of %s belongs to unit %s", tensor, name, owners[name])
    return owners


def without_units(model: onnx.ModelProto, plan: QuantPlan, units: Sequence[str], owners: Mapping[str, str],
                  ranked: Sequence[UnitSensitivity] = ()) -> QuantPlan:
    """A copy of `plan` whose `units` (and the residuals fused with them) stay in floating point."""
    drop = set(units)
    sqnr = {u.unit: u.sqnr_db for u in ranked}
    ops = {n.name: n.op_type for n in model.graph.node}

    def keep(consumers: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(n, i) for n, i in consumers if owners.get(n, n) not in drop]

    activations = {t: c for t, c in ((t, keep(c)) for t, c in plan.activations.items()) if c}
    weights = {s: c for s, c in ((s, keep(c)) for s, c in plan.weights.items()) if c}
    fallen = [{"node": u, "op": ops.get(u, ""), "reason": _reason(sqnr.get(u))} for u in units]
    return replace(plan, activations=activations, weights=weights, skipped=[*plan.skipped, *fallen],
                   residual_adds=[a for a in plan.residual_adds if owners.get(a, a) not in drop],
                   quantized_nodes=[n for n in plan.quantized_nodes if n not in drop])


def _reason(sqnr: float | None) -> str:
    detail = f" (output SQNR {sqnr:.2f} dB with only it quantized)" if sqnr is not None else ""
    return "sensitivity fallback" + detail


def _unit_tensors(plan: QuantPlan, owners: Mapping[str, str]) -> dict[str, list[str]]:
    tensors: dict[str, list[str]] = {}
    items = [*plan.activations.items(), *((s.tensor, c) for s, c in plan.weights.items())]
    for name, consumers in items:
        for node, _ in consumers:
            found = tensors.setdefault(owners.get(node, node), [])
            if name not in found:
                found.append(name)
    return tensors


# --- one gated graph for every measurement ------------------------------------------------------


def _gated_model(model: onnx.ModelProto, plan: QuantPlan, amax: Mapping[str, float], precision: str,
                 owners: Mapping[str, str], *, block_size: int, opset: int,
                 importance: Mapping[str, np.ndarray] | None,
                 quantized: dict[WeightSlot, QuantizedWeight], scale_type: str = "fp32",
                 ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The QDQ graph with every planned input behind `Where(gate_unit, dequantized, original)`."""
    qmodel, _ = insert_qdq(model, plan, amax, precision, block_size=block_size, opset=opset,
                           importance=importance, quantized=quantized, scale_type=scale_type)
    gates = {u: f"{_GATE}{i}" for i, u in enumerate(dict.fromkeys(owners.values()))}
    originals = {n.name: list(n.input) for n in model.graph.node}
    consumers = [c for cs in [*plan.activations.values(), *plan.weights.values()] for c in cs]
    wheres: dict[str, list[onnx.NodeProto]] = {}
    qnodes = {n.name: n for n in qmodel.graph.node}
    for name, index in sorted(set(consumers)):
        node, gate = qnodes[name], gates[owners[name]]
        out = f"{node.input[index]}__{gate}__{name}"
        if out not in {w.output[0] for w in wheres.get(name, [])}:
            wheres.setdefault(name, []).append(helper.make_node(
                "Where", [gate, node.input[index], originals[name][index]], [out], name=f"{out}_Where"))
        node.input[index] = out
    constants = _restore_originals(model, qmodel, {originals[n][i] for n, i in consumers})
    order = [*constants, *(w for n in qmodel.graph.node for w in [*wheres.get(n.name, []), n])]
    del qmodel.graph.node[:]
    qmodel.graph.node.extend(order)
    qmodel.graph.input.extend(helper.make_tensor_value_info(g, TensorProto.BOOL, []) for g in gates.values())
    return qmodel, gates


def _restore_originals(model: onnx.ModelProto, qmodel: onnx.ModelProto,
                       names: set[str]) -> list[onnx.NodeProto]:
    """Put back the float weights `insert_qdq` replaced; returns the Constant nodes to prepend."""
    g = qmodel.graph
    present = {i.name for i in [*g.initializer, *g.input]} | {o for n in g.node for o in n.output}
    missing = names - present
    g.initializer.extend(i for i in model.graph.initializer if i.name in missing)
    return [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in missing]


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    return all(s.shape and s.shape[0] is None for s in model_inputs(model))


def _subset(batches: Iterable[Batch], samples: int, dynamic: bool) -> list[Batch]:
    """The first `samples` samples, regrouped into batches of `_CHUNK` when the batch axis allows it."""
    taken: list[Batch] = []
    seen = 0
    for batch in batches:
        n = next(iter(batch.values())).shape[0]
        taken.append({k: v[: samples - seen] for k, v in batch.items()})
        seen += min(n, samples - seen)
        if seen >= samples:
            break
    same = len({tuple((k, v.shape[1:]) for k, v in sorted(b.items())) for b in taken}) == 1
    if not dynamic or not same or len(taken) == 1:
        return taken
    joined = {k: np.concatenate([b[k] for b in taken]) for k in taken[0]}
    return [{k: v[i: i + _CHUNK] for k, v in joined.items()} for i in range(0, seen, _CHUNK)]


class _Scorer:
    """Runs the gated graph on the subset and measures the output SQNR of a set of quantized units.

    With only units at or after node `cut` quantized, everything before `cut` computes FP32 values:
    the reference run caches the tensors that cross each of a few cuts, and such a measurement runs
    only the graph after the cut (one session per cut, held while its units are measured).
    """

    def __init__(self, gated: onnx.ModelProto, gates: Mapping[str, str], subset: list[Batch]) -> None:
        self._gated, self._gates, self._subset = gated, dict(gates), subset
        self._outputs = [o.name for o in gated.graph.output]
        self.samples = sum(next(iter(b.values())).shape[0] for b in subset)
        self.position = _first_reads(gated, gates)
        starts = list(self.position.values())[:: max(1, -(-len(self.position) // _SEGMENTS))]
        self._cuts = sorted({0, *starts})
        self._segment = {u: sum(c <= p for c in self._cuts) - 1 for u, p in self.position.items()}
        self._const = _constant_nodes(gated.graph)
        self._live = [_live_tensors(gated.graph, cut, self._const) for cut in self._cuts]
        self._reference, self._cached = self._reference_run()
        self._sessions = {0: make_session(gated, exact_qdq=True, arena=False)}
        self.runs = 0  # measurements made (each one run of a graph suffix over the samples)

    def _reference_run(self) -> tuple[list[list[np.ndarray]], list[dict[str, np.ndarray]]]:
        extra = sorted(set().union(*self._live))
        session = make_session(self._gated, outputs=extra, exact_qdq=True, arena=False)
        reference, cached = [], []
        for batch in self._subset:
            values = session.run([*self._outputs, *extra], {**batch, **self._feed(set())})
            reference.append(values[: len(self._outputs)])
            cached.append(dict(zip(extra, values[len(self._outputs):], strict=True)))
        return reference, cached

    def _feed(self, on: set[str]) -> dict[str, np.ndarray]:
        return {g: np.array(u in on) for u, g in self._gates.items()}

    def _session(self, segment: int) -> Any:
        if segment not in self._sessions:
            for old in [k for k in self._sessions if k]:  # hold one suffix session at a time
                del self._sessions[old]
            cut, live = self._cuts[segment], self._live[segment]
            types = {t: self._cached[0][t].dtype for t in live}
            self._sessions[segment] = make_session(_suffix_model(self._gated, cut, self._const, types),
                                                   exact_qdq=True, arena=False)
        return self._sessions[segment]

    def sqnr_db(self, on: set[str]) -> float:
        """Worst output SQNR (dB, capped as `trtq.metrics` caps it) with the units `on` quantized."""
        self.runs += 1
        segment = min((self._segment[u] for u in on), default=0)
        session, live = self._session(segment), self._live[segment]
        sums = [ErrorSums() for _ in self._outputs]
        for batch, cached, reference in zip(self._subset, self._cached, self._reference, strict=True):
            feed = {**batch, **self._feed(on), **{t: cached[t] for t in live}}
            for acc, ref, cand in zip(sums, reference, session.run(self._outputs, feed), strict=True):
                acc.add(finite_pair(ref, cand))
        return min(acc.sqnr_db() for acc in sums)


def _first_reads(gated: onnx.ModelProto, gates: Mapping[str, str]) -> dict[str, int]:
    """Unit -> index of the first node that reads its gate, in node order."""
    unit = {g: u for u, g in gates.items()}
    first: dict[str, int] = {}
    for i, node in enumerate(gated.graph.node):
        if node.op_type == "Where" and node.input[0] in unit:
            first.setdefault(unit[node.input[0]], i)
    return first


def _constant_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes computed from initializers alone (weight DequantizeLinear, Constant)."""
    known = {i.name for i in graph.initializer}
    const = set()
    for i, node in enumerate(graph.node):
        if all(not t or t in known for t in node.input):
            const.add(i)
            known.update(node.output)
    return const


def _live_tensors(graph: onnx.GraphProto, cut: int, const: set[int]) -> list[str]:
    """Tensors computed before node `cut` (from data) and read at or after it."""
    inputs = {i.name for i in graph.input}
    produced = {o for i, n in enumerate(graph.node[:cut]) if i not in const for o in n.output}
    needed = {t for i, n in enumerate(graph.node) if i >= cut and i not in const for t in n.input}
    return sorted((produced & (needed | {o.name for o in graph.output})) - inputs)


def _suffix_model(gated: onnx.ModelProto, cut: int, const: set[int],
                  live: Mapping[str, np.dtype]) -> onnx.ModelProto:
    """The gated graph from node `cut` on, taking the live tensors at the cut as inputs."""
    g = gated.graph
    nodes = [n for i, n in enumerate(g.node) if i >= cut or i in const]
    used = {t for n in nodes for t in n.input}
    inputs = [*g.input, *(helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(d), None)
                          for t, d in live.items())]
    graph = helper.make_graph(nodes, f"{g.name}_from_{cut}", inputs, list(g.output),
                              [i for i in g.initializer if i.name in used])
    return helper.make_model(graph, opset_imports=list(gated.opset_import), ir_version=gated.ir_version)


def _rank(scorer: _Scorer, model: onnx.ModelProto, plan: QuantPlan, owners: Mapping[str, str],
          macs: Mapping[str, int | None], progress: bool) -> list[UnitSensitivity]:
    """Measure every unit alone (in graph order, one suffix session at a time); most sensitive first."""
    ordered = sorted(dict.fromkeys(owners.values()), key=scorer.position.__getitem__)
    bar = tqdm(ordered, desc="sensitivity", unit="layer", disable=not progress)
    sqnr = {u: scorer.sqnr_db({u}) for u in bar}
    return _sensitivities(model, plan, owners, macs, sqnr, sum(_noise(s) for s in sqnr.values()))


def _noise(sqnr_db: float) -> float:
    """Output noise power relative to the signal's, from an SQNR in dB."""
    return 10.0 ** (-sqnr_db / 10.0)


def _sensitivities(model: onnx.ModelProto, plan: QuantPlan, owners: Mapping[str, str],
                   macs: Mapping[str, int | None], sqnr: Mapping[str, float], total: float
                   ) -> list[UnitSensitivity]:
    """The units measured alone (`sqnr`), each with its share of the `total` noise; most sensitive first."""
    ops = {n.name: n.op_type for n in model.graph.node}
    tensors = _unit_tensors(plan, owners)
    total = total or 1.0
    ranked = [UnitSensitivity(u, ops.get(u, ""), s, _noise(s) / total, macs.get(u), tuple(tensors.get(u, [])))
              for u, s in sqnr.items()]
    return sorted(ranked, key=lambda u: (u.sqnr_db, u.unit))


def _screen(scorer: _Scorer, model: onnx.ModelProto, plan: QuantPlan, owners: Mapping[str, str],
            macs: Mapping[str, int | None], baseline: float, share: Mapping[str, float], max_float: float,
            min_gain: float, progress: bool) -> tuple[list[UnitSensitivity], list[ScreenedGroup]]:
    """Automatic fallback's ranking by group screening (module docstring): the units measured alone, most
    sensitive first, and the groups left unsplit. Noise shares are over the partition's summed noise."""
    ordered = sorted(dict.fromkeys(owners.values()), key=scorer.position.__getitem__)
    need, n_all = 1.0 - _noise(min_gain), _noise(baseline)
    bound = _SCREEN_MARGIN * need * n_all
    size = -(-len(ordered) // _SEGMENTS)
    pending = [ordered[i: i + size] for i in range(0, len(ordered), size)]
    parts: list[tuple[list[str], float, str]] = []  # (units, sqnr, why unsplit; "" for a single unit)
    bar = tqdm(desc="sensitivity (screening)", unit="run", disable=not progress)
    while pending:  # depth first, in graph order: one suffix session serves neighbouring groups
        group = pending.pop(0)
        sqnr = scorer.sqnr_db(set(group))
        bar.update()
        if len(group) == 1:
            parts.append((group, sqnr, ""))
        elif _noise(sqnr) < bound:
            parts.append((group, sqnr, f"together {100 * _noise(sqnr) / n_all:.2f}% of the all-quantized noise, "
                                       f"under {100 * bound / n_all:.2f}% ({_SCREEN_MARGIN:g} x the {100 * need:.1f}% "
                                       f"a unit needs to gain {min_gain:g} dB)"))
        elif not any(share.get(u, math.inf) <= max_float for u in group):
            parts.append((group, sqnr, "every unit over the MAC budget or of unknown MACs"))
        else:
            half = (len(group) + 1) // 2
            pending[:0] = [group[:half], group[half:]]
    bar.close()
    total = sum(_noise(s) for _, s, _ in parts) or 1.0
    ranked = _sensitivities(model, plan, owners, macs, {g[0]: s for g, s, why in parts if not why}, total)
    groups = [ScreenedGroup(tuple(g), s, _noise(s) / total, why) for g, s, why in parts if why]
    logger.info("screening: %d units measured alone, %d in %d groups, %d runs", len(ranked),
                sum(len(g.units) for g in groups), len(groups), scorer.runs)
    return ranked, groups


def _mac_shares(macs: Mapping[str, int | None]) -> dict[str, float]:
    """Unit -> its fraction of all weighted-op MACs (units of unknown MACs are left out)."""
    total = sum(m or 0 for m in macs.values())
    return {u: m / total for u, m in macs.items() if m is not None and total}


def _auto_fall_back(scorer: _Scorer, units: list[UnitSensitivity], every: set[str], baseline: float,
                    share: Mapping[str, float], max_float: float, min_gain: float, max_trials: int
                    ) -> tuple[list[FallbackStep], list[FallbackDecision]]:
    """The fewest units to diminishing returns within the MAC budget (module docstring); `units`: the
    ranked ones, `every`: all quantized units (the screened ones stay quantized)."""
    steps: list[FallbackStep] = []
    decisions: list[FallbackDecision] = []
    quantized = set(every)
    used, current = 0.0, baseline
    for u in units:
        predicted = -10.0 * math.log10(max(1.0 - u.noise_share, 1e-12))
        if predicted < min_gain:
            decisions.append(FallbackDecision(u.unit, False, f"diminishing returns: {100 * u.noise_share:.1f}% of "
                                              f"the noise, predicted gain {predicted:.2f} dB < {min_gain:g} dB"))
            break
        if u.unit not in share or used + share[u.unit] > max_float:
            what = "unknown MACs" if u.unit not in share else f"{100 * share[u.unit]:.1f}% of the MACs"
            decisions.append(FallbackDecision(u.unit, False, f"over the MAC budget ({what}; "
                                              f"{100 * used:.1f}% already float, budget {100 * max_float:g}%)"))
            continue
        if len(steps) >= max_trials or len(quantized) == 1:
            why = f"at most {max_trials} measured steps" if len(steps) >= max_trials else "the last quantized layer"
            decisions.append(FallbackDecision(u.unit, False, why))
            break
        sqnr = scorer.sqnr_db(quantized - {u.unit})
        if sqnr - current < min_gain:
            gain = f"measured gain {sqnr - current:.2f} dB < {min_gain:g} dB"
            decisions.append(FallbackDecision(u.unit, False, gain))
            break
        quantized.discard(u.unit)
        used += share[u.unit]
        decisions.append(FallbackDecision(u.unit, True, f"{100 * u.noise_share:.1f}% of the noise, "
                                          f"{current:.2f} -> {sqnr:.2f} dB, {100 * share[u.unit]:.1f}% of the MACs"))
        steps.append(FallbackStep(u.unit, sqnr))
        logger.info("fallback step %d: %s -> %.2f dB", len(steps), u.unit, sqnr)
        current = sqnr
    return steps, decisions


def _fall_back(scorer: _Scorer, ranking: list[str], baseline: float, budget: int | None, target: float | None,
               max_trials: int, progress: bool, *, share: Mapping[str, float] | None = None,
               max_float: float | None = None) -> list[FallbackStep]:
    """Fall back the most sensitive units one by one, measuring the output after each (at most
    `max_float` of the MACs in float when given: a unit that would pass it is skipped)."""
    if (budget is None and target is None) or (target is not None and baseline >= target):
        return []
    limit = len(ranking) if budget is None else min(budget, len(ranking))
    if target is not None:
        limit = min(limit, max_trials)
    if budget is not None and budget > len(ranking):
        logger.warning("fallback budget %d exceeds the %d quantized units; keeping all in float",
                       budget, len(ranking))
    steps: list[FallbackStep] = []
    quantized = set(ranking)
    used = 0.0
    for unit in tqdm(ranking, desc="fallback", unit="step", disable=not progress):
        if len(steps) >= limit:
            break
        if max_float is not None:
            if used + (share or {}).get(unit, 1.0) > max_float:
                continue
            used += (share or {}).get(unit, 1.0)
        quantized.discard(unit)
        steps.append(FallbackStep(unit, scorer.sqnr_db(quantized)))
        logger.info("fallback step %d: %s -> %.2f dB", len(steps), unit, steps[-1].sqnr_db)
        if target is not None and steps[-1].sqnr_db >= target:
            break
    return steps


