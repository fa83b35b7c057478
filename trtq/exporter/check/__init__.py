"""Static TensorRT-compatibility check of a QDQ ONNX graph, per target and TensorRT version, without a GPU.

The package: `graph` indexes the model once (producers, consumers, constants, types, shapes, Q/DQ nodes);
`registry` holds the rules (`rule` registers a function under its id); one module per rule family
registers its rules: `quantization` (the Q/DQ nodes themselves), `versions` (opset, target, TensorRT
version, types under strong typing), `placement` (weighted ops, fusions, Tensor Cores), `attention`
(fused MHA), `plugins` (trtq's non-uniform quantizers); `report` is what `check` returns.

Each rule is one function in `RULES`; `check` runs them all, or the ids given in `rules=`. Sources:
"anchors" = shared/reference/anchors-trt-modelopt.md (§2.1 hard rules, §2.3 placement recommendations and
fused MHA, §1.2 ModelOpt placement, §4 Jetson); NvInfer.h = TensorRT header, IQuantizeLayer/IDequantizeLayer;
operators.md = onnx-tensorrt docs/operators.md; parser = onnx-tensorrt onnxOpImporters.cpp, QDQ importer.

rule id                 severity  finds                                            source
----------------------  -------  -----------------------------------------------  -------------------------
zero-point              error    a zero point that is not a constant 0            NvInfer.h; operators.md
quant-type              error    UINT8 (also a Q with no zero point), INT16,      operators.md; parser
                                 UINT16, UINT4: TensorRT has INT8/FP8/INT4/FP4
fp8-format              error    FP8 other than FLOAT8E4M3FN (E5M2, *FNUZ)        operators.md
scale-constant          error    a scale that is not a build-time constant        Quantize.html
scale-value             error    a scale value <= 0, subnormal, inf or nan        NvInfer.h
scale-dtype             error    a scale not float32/fp16/bf16; fp16/bf16 not     NvInfer.h strong typing
                                 matching the Q input; up to 10.12 (and with no   (10.3 header: a Q's input
                                 --trt) any scale type not matching it            and scale types match)
per-channel-activation  error    per-channel scales not on a constant             NvInfer.h
block-quant             error    block scales on an activation; FP8/FP4 blocks    Quantize.html; NvInfer.h
                                 before 10.13, INT8 blocks before 11; INT4        at 10.3, 10.13, 11.1
                                 blocks of non-2-D tensors up to 10.6; from 10.13
                                 a blocked axis not last or second to last
int4-activation         error    INT4 on an activation (INT4 is weight-only)      quantized-types doc
int4-odd-dim            error    a 4-bit tensor with an odd last dimension        parser: 10.1 QDQ importer;
                                 (10.3, no --trt) / odd element count (10.16+)    >= 10.8 volume % 2
conv-precision          error    Conv/ConvTranspose input not INT8/FP8            ModelOpt torch_onnx
qdq-opset               error    opset below a Q/DQ feature's: axis 13, FP8 19,   ONNX spec; ModelOpt
                                 fp16 scales 19, INT4 21, block_size 21, FP4 23
target-precision        error    FP8/FP4/INT4 on a target that lacks it           anchors 4; TARGETS
opset-range             error    opset outside the parser's (10.3: 9-20; 10.16:   operators.md; 11.x
                        warning  9-24; 11: 9-25); warning: opset 21 by INT4       parser (issue 11)
dynamic-quantize        error    a DynamicQuantizeLinear node                     operators.md
q-consumer              error    a Q output read by anything but a DQ             operators.md
dq-input                error    a DQ reading neither a Q nor a constant          operators.md
partial-quant           warning  a weighted op with some, not all, inputs         placement rec. 1
                                 quantized (bias excluded; INT4 W4A16 is fine)
output-quantized        warning  Q on a weighted op's output whose DQ feeds an    placement rec. 2, 3
                                 activation (Relu, Clip, SiLU Mul, ...) or Add
residual-input          warning  Add after a quantized Conv (read by the Add      placement rec. 4
                                 only) whose other input is not dequantized
mha-softmax-qdq         warning  Q/DQ on Softmax's input or on the mask/scale     MHA fusion; ModelOpt
                                 ops between attention MatMul and Softmax
mha-int8-placement      info     INT8 attention lacking Q/DQ before BMM1, after   MHA fusion
                                 Softmax, before BMM2; head not 16/32/64; S>512
small-gemm              info     quantized MatMul/Gemm with K or N < 16           ModelOpt
small-conv              info     quantized Conv with < 16 channels (FP8 <= 16),   ModelOpt convs_to_exclude
                                 ModelOpt's exceptions (depthwise, first layer)
fp32-region             info     float32 compute outside Q/DQ (not what           NvInfer.h kSTRONGLY_TYPED;
                        warning  --high-precision keeps FP32 on purpose);         anchors 2.2
                                 a warning on TensorRT 11 (only strong typing)
int4-fp32               warning  an INT4 DQ whose output is float32: FP32 GEMM    TensorRT / ModelOpt INT4
                                 on dequantized weights, not the W4A16 kernel     form (issue 11)
strongly-typed          info     10.x (or no --trt): FP8 / INT4 / FP4 / fp16 /    anchors 2.2; trtexec 10.3
                                 bf16 graphs need --stronglyTyped                 --stronglyTyped
target-trt              warning  orin + TensorRT 11 (AGX Orin, JetPack 7.2.2+)    anchors 4; trtq.targets
                        error    thor + TensorRT 10.3 (JetPack 6 is Orin-only)    JETPACKS
fp8-conv                warning  FP8 Q/DQ on a ConvTranspose or a grouped conv    issue 11 (no FP8 kernels
                                 with > 16 channels per group                     documented by NVIDIA)
orin-int8-attention     warning  orin, TensorRT 10.3: INT8 Q/DQ on attention      NVIDIA/TensorRT#4167
                                 MatMuls; fix: --exclude of those MatMuls         (open); README figures
nonuniform-face         warning  codebook weights / log activations in their      trtq.plugins
                                 standard-ONNX face: folded to float weights,
                                 float ops in TensorRT (no memory saving)
trtq-plugin             info     trtq plugin nodes (--plugins): the build needs    trtq.plugins.trt_face
                                 trtq's plugin library or tensorrt.plugin
                        error    a 'trtq'-domain node that is no trtq plugin

Only the main graph is read (not If/Loop subgraphs or local functions); Q/DQ means the default-domain ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace

import onnx

from trtq._io import load_model
from trtq.config import Target
from trtq.errors import TrtqError
from trtq.exporter.check import attention, placement, plugins, quantization, versions  # noqa: F401  (registers the rules)
from trtq.exporter.check.graph import Graph
from trtq.exporter.check.registry import REGISTRY, Rule
from trtq.exporter.check.report import SEVERITIES, CheckReport, Finding
from trtq.targets import TRT_VERSIONS

__all__ = ["RULES", "SEVERITIES", "CheckReport", "Finding", "Rule", "check"]

RULES: tuple[Rule, ...] = tuple(REGISTRY)


def check(
    model: onnx.ModelProto | str | os.PathLike[str],
    target: Target | str | None = None,
    trt: str | None = None,
    *,
    rules: Iterable[str] | None = None,
) -> CheckReport:
    """Check a QDQ ONNX graph against TensorRT's explicit-quantization rules, statically.

    Args:
        model: a ModelProto or the path of an .onnx file (never modified).
        target: a `Target` or a target name ('orin', 'thor', 'ampere', 'ada', 'hopper', 'blackwell');
            None checks TensorRT's rules only (no precision limits of a device).
        trt: TensorRT version ('10.3', '10.16', '11'); overrides `target.trt`. None: the target's default
            version, or the newest TensorRT for version-dependent rules when there is no target either.
        rules: run only these rule ids (default: all of `RULES`).

    Returns:
        The report; `report.ok` is False when any finding is an error.

    Raises:
        TrtqError: the file is missing or not ONNX, or the target, TensorRT version or a rule id is unknown.
    """
    resolved_target = _resolve_target(target, trt)
    version = trt if trt is not None else (resolved_target.trt_version if resolved_target else None)
    selected = _select_rules(rules)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    elif not isinstance(model, onnx.ModelProto):
        raise TypeError(f"check() takes an onnx.ModelProto or a path, not {type(model).__name__}.")
    graph = Graph(model, resolved_target, version)
    findings = [f for rule in selected for f in rule.run(graph)]
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    return CheckReport(findings, resolved_target.name if resolved_target else None, version)


def _resolve_target(target: Target | str | None, trt: str | None) -> Target | None:
    if trt is not None and trt not in TRT_VERSIONS:
        raise TrtqError(
            f"unknown TensorRT version {trt!r}.", f"use --trt with one of: {', '.join(TRT_VERSIONS)}."
        )
    if target is None:
        return None
    if isinstance(target, str):
        return Target(target, trt)
    if not isinstance(target, Target):
        raise TypeError(f"target must be a Target, a target name or None, not {type(target).__name__}.")
    return replace(target, trt=trt) if trt is not None else target


def _select_rules(ids: Iterable[str] | None) -> tuple[Rule, ...]:
    if ids is None:
        return RULES
    wanted = list(ids)
    known = {r.id for r in RULES}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise TrtqError(
            f"unknown check rule(s): {', '.join(unknown)}.", f"use rule ids from: {', '.join(known)}."
        )
    return tuple(r for r in RULES if r.id in wanted)
