"""What a graph pass may use besides the model: the quantization config and the calibration data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from trtq.calibrators.data import BatchStream
from trtq.calibrators.observer import Observation, Reducer, observe
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

    def observe(self, model: onnx.ModelProto, reducers: Sequence[Reducer], pass_name: str) -> Observation:
        """One pass of the calibration data through `model`, feeding `reducers` (`trtq.calibrators.observer`).

        Raises:
            TrtqError: no calibration data was given (the message names `pass_name`).
        """
        return observe(model, self.require_data(pass_name), reducers, desc=pass_name, progress=self.progress)
