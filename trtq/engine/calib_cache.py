"""Legacy INT8 calibration cache from trtq's ranges: TensorRT's text format, for implicit INT8 and DLA.

TensorRT 10.x can still build implicit (weakly typed) INT8 engines from an FP32 ONNX plus a
calibration cache, the path DLA builds on Orin (JetPack 6, TensorRT 10.3) often take; TensorRT 11
removed it. The cache an `IInt8EntropyCalibrator2` writes is text:

    TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2
    <tensor name>: <8 hex digits: the float32 scale, big-endian>

with NV_TENSORRT_VERSION = major * 10000 + minor * 100 + patch (NvInferRuntimeBase.h, 10.3.0 and
10.16: `NV_TENSORRT_VERSION_INT`), so TensorRT 10.3.0 writes `TRT-100300-EntropyCalibration2`. The
scale is the INT8 step, amax / 127 (ModelOpt's cache importer reads it back with `struct.unpack("!f")`).

trtq writes the scales of its INT8 sidecar's activation Q/DQ (`tensors[name]["scale"]` of
`MODEL.trtq.json`, the very float32 the QDQ graph holds), one line per tensor, sorted by name. The
names are those of the FP32 ONNX, so the cache applies to building that FP32 model weakly typed
(`trtq build FP32.onnx --calib-cache calib.cache`); tensors trtq did not quantize get no range and
TensorRT runs their layers in FP16 (or FP32).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtq._io import atomic_path
from trtq.errors import TrtqError

__all__ = ["ALGORITHM", "CalibCache", "cache_text", "header", "parse_cache", "write_calib_cache"]

ALGORITHM = "EntropyCalibration2"


def header(version: str, algorithm: str = ALGORITHM) -> str:
    """`TRT-100300-EntropyCalibration2` for '10.3' / '10.3.0' (missing parts count as 0)."""
    parts = version.split(".")
    if not 1 <= len(parts) <= 4 or not all(p.isdigit() for p in parts):
        raise TrtqError(f"TensorRT version {version!r} is not like 10.3.0.", "pass e.g. --trt 10.3.0.")
    major, minor, patch = (int(p) for p in (*parts, "0", "0")[:3])
    if major >= 11:
        raise TrtqError(f"TensorRT {version} has no implicit INT8: calibration caches end with TensorRT 10.",
                        "build the QDQ ONNX strongly typed instead (trtq build MODEL.qdq.onnx).")
    return f"TRT-{major * 10000 + minor * 100 + patch}-{algorithm}"


def cache_text(scales: dict[str, float], version: str) -> str:
    """The cache file's text: header, then `name: hex(float32 scale, big-endian)` sorted by name."""
    lines = [header(version)]
    for name in sorted(scales):
        scale = np.float32(scales[name])
        if not (np.isfinite(scale) and scale > 0):
            raise TrtqError(f"tensor {name!r} has scale {scales[name]!r}: a calibration cache needs positive scales.",
                            "re-run trtq quantize; its sidecar holds positive scales.")
        if ":" in name or "\n" in name:
            raise TrtqError(f"tensor name {name!r} cannot be written in a calibration cache line.",
                            "rename the tensor in the ONNX (no ':' or newline).")
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> tuple[str, dict[str, np.float32]]:
    """(header, {tensor: float32 scale}) of a cache's text."""
    first, *rest = text.splitlines() or [""]
    if not first.startswith("TRT-"):
        raise TrtqError("not a TensorRT calibration cache (no TRT-<version>-<algorithm> header).",
                        "pass a cache written by TensorRT or by `trtq calib-cache`.")
    scales = {}
    for line in rest:
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep or len(value) != 8:
            raise TrtqError(f"calibration cache line {line!r} is not `name: 8 hex digits`.", "regenerate the cache.")
        scales[name] = np.frombuffer(bytes.fromhex(value), dtype=">f4")[0].astype(np.float32)
    return first, scales


@dataclass(frozen=True)
class CalibCache:
    """What `write_calib_cache` wrote."""

    path: Path
    header: str
    tensors: int


def write_calib_cache(report: str | os.PathLike[str], output: str | os.PathLike[str], trt: str = "10.3") -> CalibCache:
    """Write the INT8 activation scales of a `trtq quantize` sidecar as a TensorRT calibration cache.

    Args:
        report: the `MODEL.trtq.json` of an INT8 quantization.
        output: the cache file.
        trt: the TensorRT version that will read it ('10.3', '10.3.0', '10.16.1').

    Raises:
        TrtqError: not a trtq sidecar, not INT8, no activation scales, or TensorRT 11.
    """
    path = Path(report)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TrtqError(f"{path}: no such file.", "pass the MODEL.trtq.json trtq quantize wrote.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrtqError(f"{path} is not JSON.", "pass the MODEL.trtq.json trtq quantize wrote.") from exc
    tensors = data.get("tensors") if isinstance(data, dict) else None
    precision = (data.get("summary") or {}).get("precision") if isinstance(data, dict) else None
    if not isinstance(tensors, dict):
        raise TrtqError(f"{path} is not a trtq quantize sidecar (no tensors).", "pass the MODEL.trtq.json.")
    if precision != "int8":
        raise TrtqError(f"{path} is a {precision} quantization: calibration caches hold INT8 scales.",
                        "quantize with --precision int8 and pass that sidecar.")
    scales = {n: t["scale"] for n, t in tensors.items() if t.get("kind") == "activation" and "scale" in t}
    if not scales:
        raise TrtqError(f"{path} has no activation scales.", "quantize with calibration data (INT8).")
    text = cache_text(scales, trt)
    out = Path(output)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return CalibCache(out, text.splitlines()[0], len(scales))
