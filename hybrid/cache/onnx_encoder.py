"""A transformers encoder run by ONNX Runtime: the mean of its last hidden states over the real tokens.

Both of the cache's models (the MiniLM embedder and the pair verifier) are loaded with torch and transformers,
exported here once at load (about a second each) and then run by onnxruntime, which on one core computes the same
float32 numbers in about half of torch's time for a one-question input (scripts/bench_cache.py measures both;
README). ``int8``: the exported graph's matrix products are
quantized to 8-bit integers (onnxruntime's dynamic quantization, per output channel, with 7-bit weights so that
CPUs without VNNI cannot saturate): about a third of float32's time again.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEncoder:
    """``__call__(encoding) -> (batch, hidden)``: mean-pooled states for a tokenizer's numpy encoding."""

    def __init__(self, encoder: Any, threads: int = 1, int8: bool = False, token_types: bool = True) -> None:
        """``encoder``: a transformers BERT-like model (its ``forward`` takes the three :data:`INPUTS`, or the first
        two when not ``token_types``, as MPNet's); it is not used after this and may be dropped."""
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="hybrid-onnx-") as tmp:
            path = Path(tmp) / "encoder.onnx"
            export(encoder, path, token_types)
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantized = Path(tmp) / "encoder-int8.onnx"
                root = logging.getLogger()
                root.addFilter(_no_preprocessing_hint)
                try:
                    quantize_dynamic(path, quantized, weight_type=QuantType.QInt8, per_channel=True,
                                     reduce_range=True)
                finally:
                    root.removeFilter(_no_preprocessing_hint)
                path = quantized
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3  # errors only
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.token_types = token_types

    def __call__(self, encoding: Any) -> np.ndarray:
        feeds = {name: np.asarray(encoding[name], dtype=np.int64) for name in INPUTS[:2]}
        if self.token_types:
            types = encoding.get("token_type_ids")
            feeds["token_type_ids"] = (np.zeros_like(feeds["input_ids"]) if types is None
                                       else np.asarray(types, dtype=np.int64))
        out: np.ndarray = self.session.run(None, feeds)[0]
        return out


def _no_preprocessing_hint(record: logging.LogRecord) -> bool:
    """onnxruntime's quantizer advises, on the root logger, a pre-processing step meant for image models."""
    return "pre-processing before quantization" not in record.getMessage()


def export(encoder: Any, path: Path, token_types: bool = True) -> None:
    """The encoder with mean pooling, as an ONNX graph with a dynamic batch and length."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    example = torch.tensor([[101, 7592, 2088, 102, 2129, 102]])
    args: tuple[Any, ...] = (example, torch.ones_like(example), torch.tensor([[0, 0, 0, 0, 1, 1]]))
    names = list(INPUTS) if token_types else list(INPUTS[:2])
    args = args[: len(names)]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes it keeps dynamic anyway
        torch.onnx.export(Pooled(encoder.eval()), args, str(path), input_names=names,
                          output_names=["pooled"], opset_version=17, dynamo=False,
                          dynamic_axes={name: {0: "batch", 1: "tokens"} for name in names} | {"pooled": {0: "batch"}})
