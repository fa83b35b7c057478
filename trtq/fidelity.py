"""After quantizing: the output SQNR on a few calibration samples, and a warning when it is low.

`trtq.quantize` measures the written graph against the FP32 one (after the graph passes) on
`SAMPLES` calibration samples, and warns (a logging warning, and the sidecar's
`fidelity.warning`) when an output's SQNR is below `LOW_SQNR_DB`, naming the quantized tensors whose own
Q/DQ adds the most noise and the flags that keep layers in floating point (`--target-sqnr`,
`--fallback-budget`). A graph that quantizes badly then says so on the run that made it, not on the
first deployment.

The samples are the `SAMPLES` whose content hash (sha256 of every input's bytes) is smallest, evaluated
one at a time in that order, so the figures depend neither on the batch size nor on the sample order
(like every other number of the sidecar). Cost: hashing during the calibration pass (`SmallestHashes`
rides on it) and `SAMPLES` inferences of both graphs (outputs only; the quantized tensors are exposed in a
second run only when the warning fires).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx

from trtq.calibrators.observer import Reducer
from trtq.metrics import ErrorSums, finite_pair

__all__ = ["LOW_SQNR_DB", "SAMPLES", "SmallestHashes", "choose_samples", "fidelity_check"]

logger = logging.getLogger(__name__)

LOW_SQNR_DB = 12.0  # below every default-pass figure of the bench models (EfficientNet-Lite0 INT8 19.7 dB)
SAMPLES = 8
_WORST = 3


def fidelity_check(fp32: onnx.ModelProto, quantized: onnx.ModelProto,
                   chosen: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Output SQNR of `quantized` against `fp32` on the samples `choose_samples` picked (module docstring).

    Returns:
        The sidecar's `fidelity` entry: ``samples``, ``threshold_db``, ``outputs`` ({output: SQNR dB}),
        ``noisiest`` (up to 3 quantized tensors with the lowest local SQNR: tensor, local and
        accumulated SQNR, consumers) and ``warning`` (the message, or None).
    """
    from trtq.evaluate import compare

    if not chosen:
        return {"samples": 0, "threshold_db": LOW_SQNR_DB, "outputs": {}, "noisiest": [], "warning": None}
    outputs = {name: round(sums.sqnr_db(), 2) for name, sums in _output_errors(fp32, quantized, chosen).items()}
    low = {name: db for name, db in outputs.items() if db < LOW_SQNR_DB}
    noisiest = []
    if low:  # name the layers: the same samples again, every quantized tensor exposed
        data = {name: np.concatenate([s[name] for s in chosen]) for name in chosen[0]}
        tensors = compare(fp32, quantized, data, batch_size=1).tensors
        noisiest = sorted(tensors, key=lambda t: (t.local_sqnr_db, t.name))[:_WORST]
    entry = {
        "samples": len(chosen),
        "threshold_db": LOW_SQNR_DB,
        "outputs": outputs,
        "noisiest": [{"tensor": t.name, "local_sqnr_db": round(t.local_sqnr_db, 2),
                      "sqnr_db": round(t.sqnr_db, 2), "consumers": list(t.consumers)} for t in noisiest],
        "warning": None,
    }
    if low:
        worst = ", ".join(f"{t['tensor']} ({t['local_sqnr_db']:.1f} dB)" for t in entry["noisiest"])
        entry["warning"] = (
            f"output SQNR on {len(chosen)} calibration samples is low: "
            + ", ".join(f"{n} {db:.1f} dB" for n, db in sorted(low.items()))
            + f" (below {LOW_SQNR_DB:g} dB)." + (f" Noisiest quantized tensors: {worst}." if worst else "")
            + " Keep the most sensitive layers in floating point with --target-sqnr DB or --fallback-budget N"
            " (QuantConfig.target_sqnr / fallback_budget); `trtq compare` shows every layer."
        )
        logger.warning("%s", entry["warning"])
    return entry


def _output_errors(fp32: onnx.ModelProto, quantized: onnx.ModelProto,
                   chosen: list[dict[str, np.ndarray]]) -> dict[str, ErrorSums]:
    """Per graph output, the error sums of `quantized` against `fp32`, one sample at a time, in order."""
    from trtq._ort import make_session

    ref, cand = make_session(fp32), make_session(quantized)
    names = [o.name for o in fp32.graph.output]
    sums = {name: ErrorSums() for name in names}
    for sample in chosen:
        for name, r, c in zip(names, ref.run(names, sample), cand.run(names, sample), strict=True):
            sums[name].add(finite_pair(r, c))
    return sums


def choose_samples(batches: Iterable[Mapping[str, np.ndarray]], n: int = SAMPLES) -> list[dict[str, np.ndarray]]:
    """The `n` samples with the smallest content hash, in hash order (any batching, any order)."""
    chosen = SmallestHashes(n)
    for batch in batches:
        chosen.update({}, batch, 0)
    return chosen.samples()


class SmallestHashes(Reducer):
    """The `n` samples (graph inputs, one row each) with the smallest content hash: an observer reducer,
    so the calibration pass picks them (no read of its own); two merge into the `n` smallest of both."""

    def __init__(self, n: int = SAMPLES) -> None:
        self.n = n
        self.kept: dict[bytes, dict[str, np.ndarray]] = {}

    def update(self, values: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray], samples: int) -> None:
        names = sorted(batch)
        for i in range(len(batch[names[0]])):
            sample = {k: np.ascontiguousarray(batch[k][i:i + 1]) for k in names}
            digest = hashlib.sha256()
            for k in names:
                digest.update(k.encode() + b"\0" + str(sample[k].dtype).encode() + sample[k].tobytes())
            self._keep(digest.digest(), sample)

    def _keep(self, key: bytes, sample: dict[str, np.ndarray]) -> None:
        if len(self.kept) < self.n or key < max(self.kept):
            self.kept[key] = sample
            if len(self.kept) > self.n:
                del self.kept[max(self.kept)]

    def merge(self, other: SmallestHashes) -> None:
        for key, sample in other.kept.items():
            self._keep(key, sample)

    def samples(self) -> list[dict[str, np.ndarray]]:
        return [self.kept[k] for k in sorted(self.kept)]
