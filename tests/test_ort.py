"""ONNX Runtime sessions: Q/DQ graphs run exactly as written unless told otherwise."""

from __future__ import annotations

import onnxruntime as ort

import trtq
from trtq._ort import has_qdq, make_session

import graphs


def _exact(session: ort.InferenceSession) -> bool:
    opts = session.get_session_options()
    try:
        return opts.get_session_config_entry("session.disable_quant_qdq") == "1"
    except RuntimeError:  # ORT raises for a key that was never set
        return False


def test_qdq_graphs_default_to_exact_qdq(conv_model, conv_calib) -> None:
    """ORT's fused INT8 kernels saturate on x86 CPUs without VNNI; TensorRT's arithmetic is the exact one."""
    quantized = trtq.quantize(conv_model, conv_calib, progress=False).model
    assert has_qdq(quantized) and not has_qdq(graphs.conv_block())
    assert _exact(make_session(quantized))
    assert not _exact(make_session(quantized, exact_qdq=False))
    fp32 = make_session(graphs.conv_block())
    assert not _exact(fp32)
    assert fp32.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
