"""Time trtq's TensorRT-face Triton kernels on a GPU against that GPU's measured copy bandwidth.

    python bench/plugin_kernels.py                 # on a machine with an NVIDIA GPU, torch (CUDA) and triton
    python bench/plugin_kernels.py --smoke         # tiny shapes in Triton's CPU interpreter: checks the script only

What it measures (CUDA events, median of --repeat runs after --warmup):
- copy: ``dst.copy_(src)`` of a 256 MiB buffer, bytes read + written per second: the roof for a
  memory-bound kernel on this GPU.
- dequant: `triton_kernels.dequantize` of a codebook weight [N, K] (4-bit and 3-bit, groups of 128,
  float16 output): bytes moved (packed codes + scales + codebook + float16 output) per second, as a
  fraction of the copy rate. A dequantize-only plugin is memory-bound: this fraction is its efficiency.
- matmul: the fused `codebook_matmul` (weight read packed, dequantized in registers) against
  dequantize-then-``torch.matmul`` and against ``torch.matmul`` on a float16 weight already in memory,
  for M = 1, 16, 128 tokens: the fused kernel's gain is the weight bytes it does not read.
- log: `log_fake_quantize` of 64 Mi float16 values, as a fraction of the copy rate.

Shapes: all-MiniLM-L6-v2's 384x384 and 1536x384 projections, and a 4096x4096 layer. Prints a table and
one JSON line per row; nothing is asserted (speed goals are not tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = [(384, 384), (1536, 384), (4096, 4096)]  # (N, K)
TOKENS = (1, 16, 128)
GROUP = 128


def _timer(torch, device: str, warmup: int, repeat: int):
    def run(fn) -> float:
        """Median seconds of `fn` (CUDA events on a GPU, wall clock in the interpreter)."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                import time

                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def _weight(torch, np, n: int, k: int, bits: int, device: str):
    from trtq.plugins.reference import pack_codes
    from trtq.plugins.trt_face import codes_to_words

    rng = np.random.default_rng(n * k + bits)
    packed = pack_codes(rng.integers(0, 1 << bits, (n, k)).astype(np.uint8), bits)
    words = torch.from_numpy(codes_to_words(packed)).to(device)
    codebook = torch.from_numpy(rng.standard_normal((1, 1 << bits)).astype(np.float16)).to(device)
    scales = torch.from_numpy((rng.random((n, -(-k // GROUP))) + 0.1).astype(np.float16)).to(device)
    return words, codebook, scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in Triton's CPU interpreter")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import numpy as np
    import torch

    from trtq.plugins import triton_kernels as tk

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: run on a GPU machine, or pass --smoke", file=sys.stderr)
        return 2
    shapes, tokens = ([(40, 70)], (1, 16)) if args.smoke else (SHAPES, TOKENS)
    warmup, repeat = (1, 2) if args.smoke else (args.warmup, args.repeat)
    timed = _timer(torch, device, warmup, repeat)
    rows = []
    copy_bytes = (1 << 20) if args.smoke else (256 << 20)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_rate = 2 * copy_bytes / timed(lambda: dst.copy_(src))
    rows.append({"kernel": "copy", "bytes": 2 * copy_bytes, "GB/s": copy_rate / 1e9})
    for n, k in shapes:
        for bits in (4, 3):
            words, codebook, scales = _weight(torch, np, n, k, bits, device)
            moved = words.numel() * 4 + scales.numel() * 2 + codebook.numel() * 2 + n * k * 2
            t = timed(lambda w=words, c=codebook, s=scales, b=bits, k=k: tk.dequantize(
                w, c, s, b, GROUP, k, out_dtype=torch.float16))
            rows.append({"kernel": "dequant", "bits": bits, "N": n, "K": k, "us": t * 1e6,
                         "GB/s": moved / t / 1e9, "of_copy": moved / t / copy_rate})
            w16 = tk.dequantize(words, codebook, scales, bits, GROUP, k, out_dtype=torch.float16)
            for m in tokens:
                x = torch.randn(m, k, dtype=torch.float16 if device == "cuda" else torch.float32, device=device)
                wx = w16.to(x.dtype)
                fused = timed(lambda x=x, w=words, c=codebook, s=scales, b=bits, k=k: tk.codebook_matmul(
                    x, w, c, s, b, GROUP, k))
                split = timed(lambda x=x, w=words, c=codebook, s=scales, b=bits, k=k: x @ tk.dequantize(
                    w, c, s, b, GROUP, k, out_dtype=x.dtype).T)
                dense = timed(lambda x=x, w=wx: x @ w.T)
                rows.append({"kernel": "matmul", "bits": bits, "N": n, "K": k, "M": m, "fused_us": fused * 1e6,
                             "dequant_then_matmul_us": split * 1e6, "fp16_matmul_us": dense * 1e6})
    count = (1 << 12) if args.smoke else (64 << 20)
    x = torch.rand(count, dtype=torch.float16 if device == "cuda" else torch.float32, device=device)
    t = timed(lambda: tk.log_fake_quantize(x, 1.0, 1.0, 0.0, 4))
    moved = 2 * count * x.element_size()
    rows.append({"kernel": "log", "N": count, "us": t * 1e6, "GB/s": moved / t / 1e9, "of_copy": moved / t / copy_rate})
    name = torch.cuda.get_device_name() if device == "cuda" else "Triton interpreter (CPU)"
    print(f"trtq plugin kernels on {name}")
    for row in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
