"""The query encoder of creator search's semantic retriever (issue 16): the sentence encoder
that made the catalog's creator text vectors (data.text, all-MiniLM-L6-v2 by default) exported
to ONNX with its tokenizer, so serving embeds a query without torch: the tokenizer as a
`tokenizers` JSON file (Rust, no transformers at run time), the model as ONNX (Triton's
onnxruntime backend in production, onnxruntime in-process as the fallback).

    query_encoder.onnx     input_ids, attention_mask [B, T] int64 → embedding [B, D] float32
    query_tokenizer.json   padding to the batch's longest, truncation at the encoder's limit

The ONNX graph holds the whole sentence-transformers pipeline after the tokenizer (BERT, mean
pooling over the attention mask, L2 normalisation), and parity with sentence-transformers'
own `encode` is checked on export.

`quantize` makes the int8 variant (index config `query_precision: int8`): onnxruntime's
dynamic quantization, weights int8 per output channel, activations quantized per call. On the
CPU it embeds a query ~3× faster. Per-tensor scales were as fast but moved query vectors
further (cosine to fp32 down to 0.90 on 600 queries of the 1 M set, against 0.984 per
channel), so parity for int8 is a cosine floor, checked on export like fp32's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.artifacts import sha256_file
from common.io import atomic_path
from data.text import encode, load_encoder
from index.onnx import OUTPUT, QueryEncoder
from index.user_tower import OPSET

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask")
PARITY_ATOL = 1e-4
INT8_MIN_COSINE = 0.97
"""The int8 encoder's vectors keep at least this cosine to sentence-transformers' own."""
PARITY_TEXTS = (
    "watercolor comics", "synthwave", "Clara Inkwell", "lo-fi beats to study to",
    "cooking from Lyon, every Sunday", "café noël", "a", "physics lessons for beginners " * 20,
)  # fmt: skip


class _Pooled(nn.Module):
    """BERT's last hidden states mean-pooled over the real tokens, then unit length: what the
    sentence-transformers pipeline of all-MiniLM-L6-v2 computes after tokenising."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        types = torch.zeros_like(input_ids)
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=types)
        hidden = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def tokenizer_of(encoder):
    """The encoder's fast tokenizer set up as it tokenises (truncation at its limit, padding
    to the longest in a batch), ready to be saved as JSON."""
    tok = encoder.tokenizer.backend_tokenizer
    tok.enable_truncation(encoder.max_seq_length)
    tok.enable_padding(pad_id=encoder.tokenizer.pad_token_id, pad_token=encoder.tokenizer.pad_token)
    return tok


def export(name: str, folder: Path, onnx_name: str, tokenizer_name: str) -> dict:
    """Write the query encoder `name` (data.text) to `folder`; its manifest record."""
    encoder = load_encoder(name)
    tok = tokenizer_of(encoder)
    tok.save(str(folder / tokenizer_name))
    module = _Pooled(encoder[0].auto_model).eval()
    batch = [e.ids for e in tok.encode_batch(list(PARITY_TEXTS[:2]))]
    example = torch.tensor(batch, dtype=torch.int64)
    with atomic_path(folder / onnx_name) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example, torch.ones_like(example)), str(tmp), input_names=list(INPUTS),
            output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"}, OUTPUT: {0: "batch"}},
        )  # fmt: skip
    diff = parity(encoder, folder / onnx_name, folder / tokenizer_name)
    if diff > PARITY_ATOL:
        raise ValueError(f"query encoder ONNX differs from sentence-transformers by {diff:.1e}")
    log.info("query encoder %s: ONNX parity %.1e", name, diff)
    return {"encoder": name, "precision": "fp32", "dim": int(encoder.get_embedding_dimension()),
            "max_tokens": int(encoder.max_seq_length), "opset": OPSET,
            "parity_max_abs_diff": float(diff),
            "sha256": sha256_file(folder / onnx_name)}  # fmt: skip


def parity(encoder, onnx_path: Path, tokenizer_path: Path) -> float:
    """Max abs difference between sentence-transformers' vectors and the exported pair's."""
    mine = QueryEncoder(onnx_path, tokenizer_path).encode(list(PARITY_TEXTS))
    theirs = encode(list(PARITY_TEXTS), encoder)
    return float(np.abs(mine - theirs).max())


def quantize(source: Path, target: Path, encoder_name: str, tokenizer_path: Path) -> dict:
    """Write the int8 variant of the exported encoder `source` to `target`; its manifest
    record, after checking its vectors against sentence-transformers' (INT8_MIN_COSINE)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs each tensor at INFO
    try:
        with atomic_path(target) as tmp:
            quantize_dynamic(str(source), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    mine = QueryEncoder(target, tokenizer_path).encode(list(PARITY_TEXTS))
    theirs = encode(list(PARITY_TEXTS), load_encoder(encoder_name))
    cosine = float((mine * theirs).sum(1).min())
    if cosine < INT8_MIN_COSINE:
        raise ValueError(f"int8 query encoder: cosine to sentence-transformers {cosine:.4f} "
                         f"< {INT8_MIN_COSINE}; use query_precision fp32")  # fmt: skip
    log.info("query encoder %s int8: min cosine %.4f", encoder_name, cosine)
    return {"precision": "int8", "quantization": "dynamic, per channel, QInt8 weights",
            "parity_min_cosine": round(cosine, 5), "sha256": sha256_file(target)}  # fmt: skip
