"""Loading and atomically writing models and sidecar files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from trtq.errors import TrtqError

__all__ = [
    "atomic_path",
    "file_sha256",
    "load_model",
    "save_model",
    "sidecar_path",
    "write_json",
]

_TWO_GB = 2**31 - 1


def load_model(path: str | os.PathLike[str], *, load_weights: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (external data included) or raise a `TrtqError` that names the fix."""
    p = Path(path)
    if not p.exists():
        raise TrtqError(f"{p}: no such file.", "check the path of the ONNX model.")
    if p.is_dir():
        raise TrtqError(f"{p} is a directory, not an ONNX file.", "pass the path of a .onnx file.")
    try:
        model = onnx.load(str(p), load_external_data=load_weights)
    except PermissionError as exc:
        raise TrtqError(f"{p}: cannot be read ({exc.strerror}).", "make the file readable.") from exc
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise TrtqError(
            f"{p} is not a valid ONNX model ({type(exc).__name__}).",
            "pass an .onnx file produced by torch.onnx.export or trtq.export.",
        ) from exc
    if not model.graph.node:
        raise TrtqError(
            f"{p} is not a valid ONNX model (it has no graph nodes).",
            "pass an .onnx file produced by torch.onnx.export or trtq.export.",
        )
    return model


def sidecar_path(output: str | os.PathLike[str]) -> Path:
    """`model.onnx` -> `model.trtq.json`: where trtq records every number it chose."""
    p = Path(output)
    return p.with_name(p.stem + ".trtq.json") if p.suffix == ".onnx" else p.with_name(p.name + ".trtq.json")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write `model` atomically; models over 2 GB keep their weights in `<name>.data` beside it."""
    path = Path(path)
    large = model.ByteSize() > _TWO_GB if _fits_protobuf(model) else True
    if not large:
        with atomic_path(path) as tmp:
            tmp.write_bytes(model.SerializeToString(deterministic=True))
        return path
    data_name = path.name + ".data"
    with atomic_path(path.with_name(data_name)) as tmp_data, atomic_path(path) as tmp:
        # onnx writes external data relative to the model file: write into a scratch folder first.
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            scratch_model = Path(scratch) / path.name
            onnx.save_model(
                model,
                str(scratch_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            os.replace(scratch_model, tmp)
            os.replace(Path(scratch) / data_name, tmp_data)
    return path


def _fits_protobuf(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
    except ValueError:
        return False
    return True


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write `data` as sorted, indented JSON atomically (byte-identical for equal data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
