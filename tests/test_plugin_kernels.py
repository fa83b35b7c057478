"""Triton kernels of the TensorRT face against the numpy reference, in Triton's CPU interpreter.

No GPU here: ``TRITON_INTERPRET=1`` runs the same `@triton.jit` functions on torch CPU tensors (numpy
arithmetic), so dequantize and log fake quantize must equal the reference bit for bit. The PTX the
`tensorrt.plugin` AOT implementation hands TensorRT is compiled for Orin (sm_87) and Thor (sm_110) in
a subprocess without the interpreter: Triton compiles for a named GPU target with no GPU present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trtq.plugins import reference

pytest.importorskip("triton", reason="triton is not installed (pip install 'trtq[kernels]')")
pytest.importorskip("torch", reason="the kernels' launchers take torch tensors")


# Triton decides at import whether its own library (tl.zeros, ...) is interpreted, so the interpreter runs
# in a fresh process with TRITON_INTERPRET=1 set before `import triton`; one process runs every case.
_INTERPRETED = r"""
import json, sys
import numpy as np, torch
from trtq.plugins import reference, triton_kernels as K
from trtq.plugins.trt_face import codes_to_words
out = {}

def codebook_case(seed, bits, n, k, group, per_row):
    rng = np.random.default_rng(seed)
    packed = reference.pack_codes(rng.integers(0, 1 << bits, (n, k)).astype(np.uint8), bits)
    codebook = rng.standard_normal((n if per_row else 1, 1 << bits)).astype(np.float16)
    scales = (rng.random((n, -(-k // group))) + 0.05).astype(np.float16)
    want = reference.dequantize_codebook(packed, codebook, scales, bits, group, k)
    args = (torch.from_numpy(codes_to_words(packed)), torch.from_numpy(codebook), torch.from_numpy(scales))
    return rng, args, want

for bits, n, k, group in CASES:
    for per_row in (False, True):
        _, args, want = codebook_case(bits * 1000 + n * 7 + k, bits, n, k, group, per_row)
        got = K.dequantize(*args, bits, group, k).numpy()
        half = K.dequantize(*args, bits, group, k, out_dtype=torch.float16).numpy()
        out[f"dequant-{bits}-{n}-{k}-{group}-{per_row}"] = {
            "fp32": got.dtype == np.float32 and bool(np.array_equal(got, want)),
            "fp16": bool(np.array_equal(half, want.astype(np.float16)))}

for bits, n, k, group in MATMUL_CASES:
    rng, args, wc = codebook_case(n + k, bits, n, k, group, False)
    x = rng.standard_normal((3, 11, k)).astype(np.float32)
    got = K.codebook_matmul(torch.from_numpy(x), *args, bits, group, k).numpy()
    want = x.astype(np.float64) @ wc.T.astype(np.float64)
    out[f"matmul-{bits}-{n}-{k}-{group}"] = {"shape": list(got.shape), "err": float(np.abs(got - want).max()),
                                            "bound": 1e-6 * k * float(np.abs(x).max() * np.abs(wc).max())}

for scale, step, shift, bits in LOG_CASES:
    rng = np.random.default_rng(bits)
    x = np.concatenate([rng.random(3000) ** 6 * 3 - shift, [-shift, -1.0, 0.0, 1e-30, scale, 10 * scale]])
    x = x.astype(np.float32)
    want = reference.fake_quantize_log(x, scale, step, shift, bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        got = K.log_fake_quantize(torch.from_numpy(x), scale, step, shift, bits).numpy()
    out[f"log-{scale}-{step}-{bits}"] = {"equal": bool(np.array_equal(got, want)),
                                         "mismatches": int((got != want).sum())}
print(json.dumps(out))
"""

# (bits, N, K, group): ragged last groups (K % G != 0), K not a multiple of 8 (padded rows), 3-bit codes
# crossing 32-bit words, one row, more rows than a block, a single weight
CASES = [(4, 5, 37, 8), (3, 7, 101, 16), (3, 1, 300, 128), (4, 19, 200, 64), (3, 33, 64, 7), (4, 2, 1, 1)]
MATMUL_CASES = [(4, 40, 70, 32), (3, 9, 129, 64)]
LOG_CASES = [
    (1.0, 1.0, 0.0, 4),  # log2, post-Softmax
    (0.8, 0.5, 0.0, 3),  # log√2 (RepQ-ViT)
    (2.5, 23 / 37, reference.GELU_SHIFT, 4),  # AdaLog base, post-GELU shift
]


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """Every kernel case run once in Triton's interpreter (a subprocess), by case id."""
    script = f"CASES = {CASES!r}\nMATMUL_CASES = {MATMUL_CASES!r}\nLOG_CASES = {LOG_CASES!r}\n" + _INTERPRETED
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True,
                          timeout=600,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("bits", "n", "k", "group"), CASES)
@pytest.mark.parametrize("per_row", [False, True])
def test_dequantize_equals_reference(interpreted, bits: int, n: int, k: int, group: int, per_row: bool) -> None:
    got = interpreted[f"dequant-{bits}-{n}-{k}-{group}-{per_row}"]
    assert got == {"fp32": True, "fp16": True}


@pytest.mark.parametrize(("bits", "n", "k", "group"), MATMUL_CASES)
def test_fused_matmul_equals_dequantize_then_matmul(interpreted, bits: int, n: int, k: int, group: int) -> None:
    got = interpreted[f"matmul-{bits}-{n}-{k}-{group}"]
    assert got["shape"] == [3, 11, n]
    # float32 accumulation over K terms in another order than float64: a few ulps of the row's magnitude
    assert got["err"] <= got["bound"]


@pytest.mark.parametrize(("scale", "step", "shift", "bits"), LOG_CASES)
def test_log_fake_quantize_equals_reference(interpreted, scale: float, step: float, shift: float,
                                            bits: int) -> None:
    assert interpreted[f"log-{scale}-{step}-{bits}"] == {"equal": True, "mismatches": 0}


_PTX_PROBE = """
import json
from triton.backends.compiler import GPUTarget
from trtq.plugins.triton_kernels import compile_ptx
out = {}
for arch in (87, 110):
    target = GPUTarget("cuda", arch, 32)
    for kind, consts in (("dequant", dict(BITS=3, GROUP=128, K=384)),
                         ("matmul", dict(BITS=4, GROUP=64, K=100)),
                         ("log", dict(SCALE=1.0, SHIFT=0.0, K1=-1.4426950, K0=0.0, K2=-0.6931472, LEVELS=15.0))):
        k = compile_ptx(kind, target=target, out_dtype="float16", **consts)
        out[f"{kind}{arch}"] = [k.name, f".target sm_{arch}" in k.ptx, f".entry {k.name}(" in k.ptx, k.num_warps]
print(json.dumps(out))
"""


def test_aot_ptx_compiles_for_orin_and_thor_without_a_gpu() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    done = subprocess.run([sys.executable, "-c", _PTX_PROBE], check=False, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    names = {"dequant": "codebook_dequant_kernel", "matmul": "codebook_matmul_kernel",
             "log": "log_fake_quant_kernel"}
    for key, (name, has_target, has_entry, warps) in got.items():
        assert name == names[key.rstrip("0123456789")] and has_target and has_entry and warps >= 1, key
