"""Loading and atomically writing models and sidecar files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx

from trtq.errors import TrtqError

__all__ = [
    "atomic_path",
    "atomic_paths",
    "check_output",
    "external_data_files",
    "file_sha256",
    "load_external_data",
    "load_model",
    "save_model",
    "save_outputs",
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
        model = onnx.load(str(p), load_external_data=False)
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
    if load_weights:
        load_external_data(model, p)
    return model


def external_data_files(model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[Path]:
    """The external data files the initializers of `model` (read from `path`) point at."""
    base = Path(path).parent
    names = {entry.value for init in model.graph.initializer
             if init.data_location == onnx.TensorProto.EXTERNAL
             for entry in init.external_data if entry.key == "location"}
    return [base / name for name in sorted(names)]


def load_external_data(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Load the external data of `model` (read from `path` without its weights), naming a missing file."""
    path = Path(path)
    for data in external_data_files(model, path):
        if not data.is_file():
            raise TrtqError(
                f"{path} keeps its weights in {data.name}, and {data} is missing.",
                f"put {data.name} (saved with the model) beside {path.name}, or save the model with its "
                "weights inside.",
            )
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # a truncated or unreadable data file
        raise TrtqError(
            f"the external data of {path} cannot be read ({type(exc).__name__}: {exc}).",
            "save the model and its .data file again (torch.onnx.export or onnx.save_model).",
        ) from exc


def check_output(output: str | os.PathLike[str], inputs: Mapping[str | os.PathLike[str], str]) -> None:
    """Refuse, before any work is done, an output that cannot be written or would overwrite an input.

    `quantize` writes `output`, its sidecar and, for models over 2 GB, `<output>.data`; none may be
    (or link to) any path of `inputs` (path -> what it is: "model", "calibration data", ...), and the
    output folder must be a folder trtq can create files in.
    """
    output = Path(output)
    written = {output: "output", sidecar_path(output): "report", output.with_name(output.name + ".data"):
               "output's external data"}
    for path, what in written.items():
        if path.is_dir():
            raise TrtqError(f"the {what} {path} is a directory.", "pass a file path to -o/--output.")
        for source, kind in inputs.items():
            if source is not None and _same_file(path, Path(source)):
                raise TrtqError(f"the {what} {path} would overwrite the {kind} {source}.",
                                "pass a different -o/--output: trtq never writes over its inputs.")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise TrtqError(f"cannot write {output}: {folder} is not a folder.", "pass an output path in a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrtqError(f"{output} cannot be written: {folder} does not take new files ({exc.strerror}).",
                        "pass an output path in a folder you can write to.") from exc


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def sidecar_path(output: str | os.PathLike[str]) -> Path:
    """`model.onnx` -> `model.trtq.json`: where trtq records every number it chose."""
    p = Path(output)
    return p.with_name(p.stem + ".trtq.json") if p.suffix == ".onnx" else p.with_name(p.name + ".trtq.json")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds."""
    with atomic_paths(final) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*finals: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """Yield temporary paths beside `finals`; if the block succeeds, rename them all into place at once.

    The renames run with SIGINT/SIGTERM held back, so Ctrl-C leaves either every file new or every file as
    it was, never a new model beside an old sidecar; temporaries never outlive the block. Files get the
    mode a new file gets (0666 less the umask), not mkstemp's 0600.
    """
    paths = [Path(f) for f in finals]
    tmps: list[Path] = []
    try:
        for final in paths:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield tmps
        mode = 0o666 & ~_umask()
        for tmp in tmps:
            os.chmod(tmp, mode)
        with _interrupts_held():
            for tmp, final in zip(tmps, paths):
                os.replace(tmp, final)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (main thread of a POSIX process; elsewhere a no-op)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write `model` atomically; models over 2 GB keep their weights in `<name>.data` beside it."""
    return save_outputs(model, None, path)[0]


def save_outputs(model: onnx.ModelProto, report: Any, path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """Write `model` to `path` and, unless None, `report` to its sidecar: all files appear together or none.

    Models over 2 GB keep their weights in `<name>.data` beside `path`.
    """
    path = Path(path)
    sidecar = sidecar_path(path) if report is not None else None
    large = model.ByteSize() > _TWO_GB if _fits_protobuf(model) else True
    finals = [path] + ([path.with_name(path.name + ".data")] if large else []) + ([sidecar] if sidecar else [])
    with atomic_paths(*finals) as tmps:
        if large:
            _write_external(model, path, tmps[0], tmps[1])
        else:
            tmps[0].write_bytes(_serialize(model))
        if sidecar is not None:
            tmps[-1].write_text(_dump_json(report))
    return path, sidecar


def _serialize(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def _write_external(model: onnx.ModelProto, path: Path, tmp: Path, tmp_data: Path) -> None:
    data_name = path.name + ".data"
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


def _fits_protobuf(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
    except ValueError:
        return False
    return True


def _dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write `data` as sorted, indented JSON atomically (byte-identical for equal data)."""
    text = _dump_json(data)  # before any file is created: a value JSON cannot hold leaves nothing behind
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
