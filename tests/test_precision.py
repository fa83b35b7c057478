"""The precision table: each entry is self-consistent and is what the modules read."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from trtq.config import PRECISIONS, QuantConfig
from trtq.errors import TrtqError
from trtq.precision import TABLE, get_precision, opset_of
from trtq.targets import TARGETS


@pytest.mark.parametrize("name", list(TABLE))
def test_entry_round_trips_its_grid(name: str) -> None:
    spec = TABLE[name]
    assert np.dtype(onnx.helper.tensor_dtype_to_np_dtype(spec.onnx_type)) == spec.dtype
    codes = spec.quantize(np.array([-1e9, spec.qmin, -0.3, 0.0, 0.7, spec.qmax, 1e9]))
    assert codes.dtype == spec.dtype
    values = codes.astype(np.float64)
    assert values.min() == spec.qmin and values.max() == spec.qmax  # saturates, never wraps
    np.testing.assert_array_equal(spec.grid(values), values)  # grid points are fixed points
    assert spec.min_opset >= spec.type_opset and (spec.block_size is not None) == spec.blockwise


def test_writable_precisions_are_the_config_choices() -> None:
    assert PRECISIONS == tuple(n for n, p in TABLE.items() if p.writable) == ("int8", "fp8", "int4")
    for name in PRECISIONS:
        QuantConfig(precision=name)
    with pytest.raises(TrtqError, match="unknown precision 'fp4'"):
        QuantConfig(precision="fp4")
    with pytest.raises(TrtqError, match="one of: int8, fp8, int4"):
        get_precision("int3")


def test_targets_come_from_the_target_table() -> None:
    assert set(TABLE["fp8"].targets) == {"thor", "ada", "hopper", "blackwell"}
    assert set(TABLE["int8"].targets) == set(TARGETS)
    assert all(set(p.targets) <= set(TARGETS) and p.targets for p in TABLE.values())


def test_opset_of_reads_the_default_domain() -> None:
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.microsoft", 1),
                                                    helper.make_opsetid("", 19)])
    assert opset_of(model) == 19
    del model.opset_import[:]
    assert opset_of(model) is None
