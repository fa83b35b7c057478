"""What a graph pass may use besides the model: the quantization config and the calibration data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from trtq.calibrators.data import BatchStream
from trtq.calibrators.stats import ChannelStats, collect_channel_stats
from trtq.config import QuantConfig
from trtq.errors import TrtqError

if TYPE_CHECKING:
    from trtq.exporter.placement import QuantPlan

__all__ = ["PassContext"]


@dataclass
class PassContext:
    """Shared by every pass of one `trtq.quantize` run.

    Attributes:
        config: the run's `QuantConfig` (precision, seed, block size, ...; default: the defaults).
        batches: the calibration data as a validated, re-iterable stream (None: no data given).
            Passes never change graph inputs, so the stream fits every intermediate model.
        progress: show progress bars.
        planner: how the run decides placement (the pipeline's; None: `plan_quantization` with the
            config's precision, exclude patterns and block size). Read through `plan`.
        rng: the run's seeded random generator (draw from it, never from global state).
        last_plan: the plan `plan` returned last (the pipeline reuses it after a `reads_plan` pass).
    """

    config: QuantConfig = field(default_factory=QuantConfig)
    batches: BatchStream | None = None
    progress: bool = False
    planner: Callable[[onnx.ModelProto], QuantPlan] | None = None
    rng: np.random.Generator = field(init=False)
    last_plan: QuantPlan | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)

    def plan(self, model: onnx.ModelProto) -> QuantPlan:
        """Where the run puts Q/DQ on `model`: the one placement decision, shared with the pipeline."""
        if self.planner is None:
            from trtq.exporter.placement import plan_quantization

            cfg = self.config
            self.last_plan = plan_quantization(model, cfg.precision, cfg.exclude, cfg.block_size)
        else:
            self.last_plan = self.planner(model)
        return self.last_plan

    def require_data(self, pass_name: str) -> BatchStream:
        """The calibration stream, or a clear error naming the pass that needs it."""
        if self.batches is None:
            raise TrtqError(f"the {pass_name} pass needs calibration data.",
                            f"pass --calib-data, or leave {pass_name} out of --passes.")
        return self.batches

    def channel_stats(self, model: onnx.ModelProto, axes: Mapping[str, int], pass_name: str) -> dict[str, ChannelStats]:
        """Per-channel absmax / mean / mean-square of tensors of `model` over the calibration data."""
        return collect_channel_stats(model, axes, self.require_data(pass_name), progress=self.progress)

    def sample_rows(self, model: onnx.ModelProto, axes: Mapping[str, int], max_rows: int,
                    pass_name: str) -> dict[str, np.ndarray]:
        """Up to `max_rows` rows (vectors along each tensor's channel axis) of each tensor, drawn uniformly.

        A seeded reservoir sample over the whole calibration set: memory is `max_rows` x channels per
        tensor whatever the number of samples. Rows holding non-finite values are skipped.

        Returns:
            tensor name -> float32 array [rows, channels].
        """
        from trtq._ort import make_session
        from trtq.calibrators.stats import SENTINEL

        names = sorted(axes)
        session = make_session(model, outputs=names)
        rng = np.random.default_rng(self.config.seed)
        reservoir: dict[str, np.ndarray] = {}
        seen = dict.fromkeys(names, 0)
        for batch in self.require_data(pass_name):
            for name, value in zip(names, session.run(names, batch)):
                x = np.moveaxis(np.asarray(value, np.float32), axes[name], -1)
                x = x.reshape(-1, x.shape[-1])
                x = x[np.all(np.abs(x) < SENTINEL, axis=1)]
                reservoir[name] = _reservoir_add(reservoir.get(name), x, seen[name], max_rows, rng)
                seen[name] += len(x)
        return reservoir


def _reservoir_add(res: np.ndarray | None, rows: np.ndarray, seen: int, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Algorithm R over a block of rows: every row seen so far is kept with probability size/seen."""
    if res is None:
        res = np.empty((0, rows.shape[1]), rows.dtype)
    take = max(0, min(size - len(res), len(rows)))
    res = np.concatenate([res, rows[:take]])
    for i in range(take, len(rows)):
        j = rng.integers(0, seen + i + 1)
        if j < size:
            res[j] = rows[i]
    return res
