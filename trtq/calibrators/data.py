"""Calibration and evaluation data: every accepted source becomes a re-iterable stream of batches.

Accepted sources (DESIGN.md "Calibration data"):
- a path to an `.npz` (arrays keyed by input name, first axis = sample) or, for one-input models, an `.npy`;
- a mapping `{input_name: array}` with the sample on the first axis;
- any iterable of `{input_name: array}` batches (a list, a generator, a DataLoader yielding dicts);
- an ONNX Runtime `CalibrationDataReader` (anything with `get_next()`);
- a `BatchSource`: an image folder, in-memory images or a text file with a declared preprocessing
  (`trtq.calibrators.images.ImageFolder` / `ImageList`, `trtq.calibrators.text.TextSource`, either
  image source wrapped by `trtq.calibrators.degrade.Degraded`); it batches itself to the stream's
  batch size and is read again for each pass.

`.npz` files are read row by row from the archive and `.npy` files are memory-mapped, so a file far
larger than memory streams. One-shot iterators are spilled to a temporary folder during the first
pass so the second (histogram) pass can replay them without holding them in memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnx

from trtq.errors import TrtqError

__all__ = ["Batch", "BatchSource", "BatchStream", "InputSpec", "model_inputs", "open_batches", "to_numpy"]

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """A graph input: its name, numpy dtype, and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@runtime_checkable
class BatchSource(Protocol):
    """A re-iterable source that batches itself and reports what it read (image folders, text files).

    `BatchStream` asks it for batches of the stream's batch size (a source may keep a batch size of
    its own), reads it again for every pass (nothing is spilled), and hands its `report()` (files
    skipped, degradation recipe, preprocessing) to the sidecar.
    """

    def batches(self, batch_size: int) -> Iterator[Mapping[str, Any]]: ...

    def report(self) -> dict[str, Any]: ...


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that need data (initializers listed as inputs are left out)."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


class BatchStream:
    """A validated, re-iterable stream of batches over one data source.

    Iterating yields `{input_name: array}` batches whose names, dtypes and ranks match the model.
    The first full iteration counts samples (`num_samples`); later iterations replay the same
    batches in the same order.

    Args:
        source: any source listed in the module docstring.
        inputs: the model's inputs, from `model_inputs`.
        batch_size: samples per batch when trtq slices arrays itself.
        max_samples: stop after this many samples (None: all).
        what: "calibration" or "evaluation", for error messages.
    """

    def __init__(
        self,
        source: Any,
        inputs: list[InputSpec],
        *,
        batch_size: int = 8,
        max_samples: int | None = None,
        what: str = "calibration",
    ) -> None:
        self._inputs = {s.name: s for s in inputs}
        static = {s.shape[0] for s in inputs if s.shape}
        # A model exported with a fixed batch dimension takes batches of exactly that size.
        self._batch_size = static.pop() if len(static) == 1 and None not in static else batch_size
        self._max_samples = max_samples
        self._what = what
        self._spill: tempfile.TemporaryDirectory[str] | None = None
        self._spilled: list[Path] = []
        self._source = _normalise(source, what)
        self.num_samples: int | None = None
        self._check_sample_shape()
        if isinstance(self._source, _Arrays) and set(self._source.names) != {"__single__"}:
            self._check_names(self._source.names)  # before any pass reads a row

    def _check_sample_shape(self) -> None:
        """An image source's sample shape against the model input it feeds, before one image is read."""
        key_and_shape = getattr(self._source, "sample_key_and_shape", None)
        if key_and_shape is None:
            return
        key, shape = key_and_shape
        spec = self._inputs.get(key) if key != "__single__" else (
            next(iter(self._inputs.values())) if len(self._inputs) == 1 else None)
        if spec is None or len(spec.shape) != len(shape) + 1:
            return  # _validate names the mismatch on the first batch
        if any(d is not None and d != a for d, a in zip(spec.shape[1:], shape)):
            raise TrtqError(
                f"the image preprocessing gives samples of shape {list(shape)}, but the model input "
                f"{spec.describe()} takes {['?' if d is None else d for d in spec.shape[1:]]}.",
                f"match the model's input size: {_size_hint(spec, self._source)}.",
            )

    def __iter__(self) -> Iterator[Batch]:
        if self._spill is not None and self.num_samples is not None:
            yield from (dict(np.load(p)) for p in self._spilled)
            return
        one_shot = isinstance(self._source, _OneShot)
        if one_shot and self.num_samples is not None:
            raise TrtqError(f"the {self._what} data can only be read once.", "pass a list, an .npz or a re-iterable.")
        if one_shot:
            self._spill = tempfile.TemporaryDirectory(prefix="trtq-spill-")
        seen = 0
        for raw in self._raw_batches():
            batch = self._validate(raw)
            n = _batch_len(batch, self._what)
            if self._max_samples is not None and seen + n > self._max_samples:
                batch = {k: v[: self._max_samples - seen] for k, v in batch.items()}
                n = self._max_samples - seen
            if n == 0:
                break
            if self._spill is not None:
                path = Path(self._spill.name) / f"{len(self._spilled):08d}.npz"
                np.savez(path, **batch)
                self._spilled.append(path)
            seen += n
            yield batch
            if self._max_samples is not None and seen >= self._max_samples:
                break
        if seen == 0:
            raise TrtqError(
                f"the {self._what} set is empty.",
                f"pass at least one sample for each input ({', '.join(self._inputs)}).",
            )
        self.num_samples = seen

    def source_report(self) -> dict[str, Any] | None:
        """What a `BatchSource` read in its last pass (skipped files, degradations); None for others."""
        return self._source.report() if isinstance(self._source, BatchSource) else None

    def close(self) -> None:
        """Delete the spill folder of a one-shot source, if any."""
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None
            self._spilled = []

    def _raw_batches(self) -> Iterator[Mapping[str, Any]]:
        src = self._source
        if isinstance(src, (_Arrays, BatchSource)):
            yield from src.batches(self._batch_size)
        else:
            yield from src

    def _check_names(self, names: list[str]) -> None:
        missing = [n for n in self._inputs if n not in names]
        extra = [n for n in names if n not in self._inputs]
        if missing or extra:
            expected = "; ".join(s.describe() for s in self._inputs.values())
            raise TrtqError(
                f"{self._what} data names {sorted(names)} do not match the model inputs"
                + (f" (missing: {', '.join(missing)})" if missing else "")
                + (f" (unknown: {', '.join(extra)})" if extra else "")
                + ".",
                f"key the arrays by the model's input names: {expected}.",
            )

    def _validate(self, raw: Mapping[str, Any]) -> Batch:
        if not isinstance(raw, Mapping):
            raise TrtqError(
                f"a {self._what} batch is a {type(raw).__name__}, not a mapping of input name to array.",
                "yield dicts such as {'input': array}.",
            )
        if set(raw) == {"__single__"}:
            if len(self._inputs) != 1:
                raise TrtqError(
                    f"the {self._what} data is one unnamed array (an .npy file, or images without an input "
                    f"name) but the model has {len(self._inputs)} inputs: {', '.join(self._inputs)}.",
                    "save an .npz keyed by input names: numpy.savez(path, **{name: array}); for images, "
                    "set ImagePreprocess(input_name=...) or --input-name.",
                )
            raw = {next(iter(self._inputs)): raw["__single__"]}
        self._check_names(list(raw))
        return {name: _conform(np.asarray(to_numpy(raw[name])), self._inputs[name], self._what)
                for name in self._inputs}


def _size_hint(spec: InputSpec, source: Any) -> str:
    nhwc = getattr(source, "preprocess", None) is not None and source.preprocess.layout == "NHWC"
    h, w = spec.shape[1:3] if nhwc else spec.shape[2:4]
    if h is None or w is None:
        return "set the crop (--crop-size / --image-size) to the model's static height and width"
    return f"--image-size {h}" if h == w else f"--image-size {w}x{h} (width x height)"


def open_batches(source: Any, model: onnx.ModelProto, **kwargs: Any) -> BatchStream:
    """A `BatchStream` over `source`, validated against `model`'s inputs."""
    return BatchStream(source, model_inputs(model), **kwargs)


def to_numpy(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        return value.detach().cpu().numpy()
    return value


def _conform(arr: np.ndarray, spec: InputSpec, what: str) -> np.ndarray:
    if arr.ndim != len(spec.shape):
        raise TrtqError(
            f"{what} array {spec.name!r} has shape {arr.shape} (rank {arr.ndim}); the model expects "
            f"{spec.describe()} (rank {len(spec.shape)}).",
            "give each batch the model's input rank, with the samples on the first axis.",
        )
    if any(d is not None and a != d for a, d in zip(arr.shape, spec.shape)):
        raise TrtqError(
            f"{what} array {spec.name!r} has shape {arr.shape}; the model expects {spec.describe()}.",
            "resize or pad the data to the model's input shape (or export the model with dynamic axes).",
        )
    if arr.dtype != spec.dtype:
        if (arr.dtype.kind != spec.dtype.kind and not (arr.dtype.kind in "iub" and spec.dtype.kind in "iu")
                and not (arr.dtype.kind in "iuf" and spec.dtype.kind == "f")):
            raise TrtqError(
                f"{what} array {spec.name!r} has dtype {arr.dtype}; the model expects {spec.dtype}.",
                f"convert the data to {spec.dtype}.",
            )
        arr = arr.astype(spec.dtype)
    return np.ascontiguousarray(arr)


def _batch_len(batch: Batch, what: str) -> int:
    lengths = {a.shape[0] if a.ndim else 1 for a in batch.values()}
    if len(lengths) != 1:
        raise TrtqError(
            f"the arrays of one {what} batch hold different sample counts {sorted(lengths)}.",
            "give every input the same number of samples on the first axis.",
        )
    return lengths.pop()


class _OneShot:
    """An iterator or CalibrationDataReader: readable once, spilled to disk for replay."""

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it

    def __iter__(self) -> Iterator[Any]:
        return self._it


class _Arrays:
    """Arrays keyed by input name (in memory, memory-mapped, or rows read from an .npz)."""

    def __init__(self, columns: Mapping[str, Any], label: str) -> None:
        self._columns = columns
        self._label = label

    @property
    def names(self) -> list[str]:
        return list(self._columns)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        readers: dict[str, _RowReader | _NpzRowReader] = {}
        try:
            for name, col in self._columns.items():
                readers[name] = _rows(col)
        except BaseException:
            for r in readers.values():
                r.close()
            raise
        lengths = {name: r.length for name, r in readers.items()}
        if len(set(lengths.values())) > 1:
            raise TrtqError(
                f"{self._label}: arrays hold different sample counts {lengths}.",
                "give every input the same number of samples on the first axis.",
            )
        total = next(iter(lengths.values()), 0)
        try:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                yield {name: r.read(start, stop) for name, r in readers.items()}
        finally:
            for r in readers.values():
                r.close()


class _RowReader:
    def __init__(self, arr: np.ndarray) -> None:
        self._arr = arr
        self.length = arr.shape[0] if arr.ndim else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._arr[start:stop])

    def close(self) -> None:
        pass


# what reading a damaged .npz member raises: bad magic or header, truncated or corrupt compressed data
_UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, SyntaxError)


class _NpzRowReader:
    """Reads consecutive rows of one array of an .npz without loading the whole array."""

    def __init__(self, path: Path, member: str) -> None:
        self._path, self._member = path, member
        self._zip = zipfile.ZipFile(path)
        try:
            self._fh = self._zip.open(member)
            version = np.lib.format.read_magic(self._fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(self._fh)
        except Exception as exc:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
            self._zip.close()
            raise self._error(exc) from exc
        if fortran or dtype.hasobject:
            self.close()
            raise TrtqError(f"{path}:{member} is a Fortran-ordered or object array.", "save C-ordered numeric arrays.")
        self._shape, self._dtype = shape, dtype
        self.length = shape[0] if shape else 0
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._pos = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if start != self._pos:
            raise RuntimeError("rows of an .npz member are read in order")
        want = (stop - start) * self._row_bytes
        try:
            buf = self._fh.read(want)
        except _UNREADABLE as exc:
            raise self._error(exc) from exc
        if len(buf) != want:
            raise self._error(EOFError(f"truncated: {len(buf)} of the {want} bytes of rows {start}..{stop - 1}"))
        self._pos = stop
        return np.frombuffer(buf, dtype=self._dtype).reshape((stop - start, *self._shape[1:])).copy()

    def _error(self, exc: BaseException) -> TrtqError:
        return TrtqError(f"{self._path}: member {self._member} is not a readable array ({exc}).",
                         "save the arrays again with numpy.savez(path, **{input_name: array}).")

    def close(self) -> None:
        self._fh.close()
        self._zip.close()


def _rows(col: Any) -> _RowReader | _NpzRowReader:
    if isinstance(col, tuple) and len(col) == 2 and isinstance(col[0], Path):
        return _NpzRowReader(*col)
    return _RowReader(np.asarray(to_numpy(col)))


def _normalise(source: Any, what: str) -> Any:
    if source is None:
        flag, arg = ("--data", "data") if what == "evaluation" else ("--calib-data", "calib_data")
        raise TrtqError(f"no {what} data was given.", f"pass {flag} PATH.npz (or {arg}= in Python).")
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), what)
    if isinstance(source, Mapping):
        return _Arrays(source, f"{what} mapping")
    if isinstance(source, BatchSource):
        return source
    if hasattr(source, "get_next"):  # onnxruntime.quantization.CalibrationDataReader
        return _OneShot(iter(source.get_next, None))
    if isinstance(source, Iterable):
        return _OneShot(iter(source)) if iter(source) is source else source
    raise TrtqError(
        f"{what} data of type {type(source).__name__} is not understood.",
        "pass an .npz path, a dict of arrays, an iterable of {input_name: array} batches, "
        "or an onnxruntime CalibrationDataReader.",
    )


def _from_path(path: Path, what: str) -> _Arrays:
    if not path.exists():
        raise TrtqError(f"{what} data {path}: no such file.", "check the path given to --calib-data / --data.")
    if path.is_dir():
        raise TrtqError(
            f"{what} data {path} is a folder: a folder of images needs a declared preprocessing.",
            "pass --preprocess FILE.json or --image-size N with it (CLI), or "
            "trtq.calibrators.images.ImageFolder(path, ImagePreprocess(...)) (Python).",
        )
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:
            raise TrtqError(f"{path} is not a readable .npy file ({exc}).", "save arrays with numpy.save.") from exc
        return _Arrays({"__single__": arr}, str(path))
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise TrtqError(
            f"{what} data {path} is not an .npz archive.",
            "save the arrays with numpy.savez(path, **{input_name: array}).",
        ) from exc
    if not members:
        raise TrtqError(f"{what} data {path} holds no arrays.", "save at least one array per model input.")
    return _Arrays({m[: -len(".npy")]: (path, m) for m in members}, str(path))
