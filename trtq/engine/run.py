"""`trtq run`: a TensorRT engine on evaluation data, through Polygraphy's TrtRunner.

`EngineRunner` is also the candidate side of `trtq compare MODEL.onnx MODEL.engine`
(`trtq.evaluate.compare` uses it when the candidate is an engine file), so an engine's fidelity is
reported exactly like a QDQ ONNX's: per graph output, against the ONNX run in ONNX Runtime.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtq._io import atomic_path
from trtq.calibrators.data import BatchStream, InputSpec
from trtq.engine import _trt
from trtq.engine.plan import existing_file
from trtq.errors import TrtqError

__all__ = ["ENGINE_SUFFIXES", "EngineRunner", "RunReport", "is_engine", "run"]

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def is_engine(path: Any) -> bool:
    """True for a path whose suffix names a serialized TensorRT engine (.engine, .plan, .trt)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix in ENGINE_SUFFIXES


class EngineRunner:
    """A deserialized engine behind Polygraphy's TrtRunner: `runner(batch) -> {output name: array}`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = existing_file(path, "engine", "build one with `trtq build MODEL.onnx -o MODEL.engine`.")
        trt, poly = _trt.load()
        self._runner = _trt.runner(trt, poly, path.read_bytes())
        try:
            self._runner.activate()
        except Exception as exc:  # Polygraphy reports deserialization failures as its own exception
            raise TrtqError(f"TensorRT cannot load {path}: {exc}",
                            "run an engine with the TensorRT version and on the GPU model that built it.") from exc
        io = _trt.engine_io(trt, self._runner.engine)
        self.inputs = [InputSpec(t["name"], np.dtype(t["dtype"]), tuple(None if d < 0 else d for d in t["shape"]))
                       for t in io if t["mode"] == "input"]
        self.outputs = [t["name"] for t in io if t["mode"] == "output"]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            out = self._runner.infer(feed_dict=batch)
        except Exception as exc:
            raise TrtqError(f"TensorRT failed to run a batch: {exc}",
                            "give the data shapes inside the engine's optimization profile (its .engine.json).",
                            ) from exc
        return {**batch, **{k: np.array(v) for k, v in out.items()}}

    def close(self) -> None:
        self._runner.deactivate()


@dataclass
class RunReport:
    """What `run` did: samples, each output's shape and dtype, and the host-side time per batch."""

    samples: int
    outputs: dict[str, dict[str, Any]]
    batch_ms: list[float] = field(default_factory=list)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        ms = np.array(self.batch_ms) if self.batch_ms else np.zeros(1)
        return {"samples": self.samples, "outputs": self.outputs, "batches": len(self.batch_ms),
                "batch_ms": {"mean": float(ms.mean()), "median": float(np.median(ms)), "max": float(ms.max())},
                "path": None if self.path is None else str(self.path)}

    def format(self) -> str:
        d = self.to_dict()
        lines = [(f"trtq run: {self.samples} samples in {d['batches']} batches, "
                  f"{d['batch_ms']['median']:.3f} ms median per batch (host wall time, copies included)")]
        lines += [f"  {name}: {o['dtype']}{o['shape']}" for name, o in self.outputs.items()]
        if self.path is not None:
            lines.append(f"wrote {self.path}")
        return "\n".join(lines)


def run(engine: str | os.PathLike[str], data: Any, *, output: str | os.PathLike[str] | None = None,
        batch_size: int = 1, max_samples: int | None = None) -> RunReport:
    """Run an engine on `data` (.npz / dict / batches, as for `trtq.compare`); optionally save the outputs.

    Args:
        engine: the engine file.
        data: evaluation data keyed by input name.
        output: an .npz to write the outputs to, concatenated over samples (None: not kept).
        batch_size: samples per inference.
        max_samples: stop after this many samples.

    Raises:
        TrtqError: no TensorRT (naming what to install), an unreadable engine, data not matching its inputs.
    """
    runner = EngineRunner(engine)
    stream = BatchStream(data, runner.inputs, batch_size=batch_size, max_samples=max_samples, what="evaluation")
    kept: dict[str, list[np.ndarray]] = {name: [] for name in runner.outputs}
    times: list[float] = []
    samples = 0
    try:
        for batch in stream:
            start = time.perf_counter()
            values = runner(dict(batch))
            times.append((time.perf_counter() - start) * 1e3)
            samples += next(iter(batch.values())).shape[0]
            for name in runner.outputs:
                if output is not None or not kept[name]:
                    kept[name].append(values[name])
    finally:
        stream.close()
        runner.close()
    outputs = {name: {"shape": list(v[0].shape), "dtype": str(v[0].dtype)} for name, v in kept.items() if v}
    path = None
    if output is not None:
        path = Path(output)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{name: np.concatenate(v) for name, v in kept.items() if v})
    return RunReport(samples, outputs, times, path)
