"""Reference embeddings of the bundled model from the Python `model2vec` package.

    pip install model2vec && python3 tools/distill/reference_vectors.py

Turns the bundled int8 model (crates/uctx/assets/model) into a float32 Model2Vec directory,
encodes a handful of texts with `model2vec.StaticModel` (no truncation) and writes
crates/uctx/tests/data/encoder_reference.json, which the encoder tests compare against.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "crates/uctx/assets/model"
OUT = ROOT / "crates/uctx/tests/data/encoder_reference.json"

TEXTS = [
    "The API server listens on port 8080.",
    "We decided to name the project Falcon and ship it in March.",
    "fn main() { println!(\"hello, world\"); }",
    "Le café de la gare sert un crème brûlée délicieux.",
    "東京は日本の首都です。",
    "Great party tonight 🎉 see you there",
    "  leading and trailing whitespace\n\tand tabs  ",
    # Longer than the 512 tokens at which Python's default would cut: encoded whole.
    " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i}." for i in range(80)),
]


def export_float32(dst: Path) -> None:
    st = load_file(str(BUNDLE / "model.safetensors"))
    table = st["embeddings"].astype(np.float32) * st["scales"][:, None]
    save_file({"embeddings": np.ascontiguousarray(table)}, str(dst / "model.safetensors"))
    (dst / "tokenizer.json").write_bytes((BUNDLE / "tokenizer.json").read_bytes())
    cfg = json.loads((BUNDLE / "config.json").read_text())
    cfg.pop("quantization", None)
    (dst / "config.json").write_text(json.dumps(cfg))


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from model2vec import StaticModel
    except ImportError:
        sys.exit("the Python package model2vec is missing: `pip install model2vec`")
    with tempfile.TemporaryDirectory() as tmp:
        export_float32(Path(tmp))
        model = StaticModel.from_pretrained(tmp)
        vecs = model.encode(TEXTS, max_length=None, normalize=True)
        model.tokenizer.no_truncation()
        tokens = [len(e.ids) for e in model.tokenizer.encode_batch(TEXTS, add_special_tokens=False)]
    import model2vec

    out = {
        "generated_by": "tools/distill/reference_vectors.py",
        "model2vec_version": model2vec.__version__,
        "model": "crates/uctx/assets/model (int8 rows times scales, as float32)",
        "cases": [
            {"text": t, "tokens": n, "vector": [round(float(x), 6) for x in v]}
            for t, n, v in zip(TEXTS, tokens, vecs)
        ],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT} ({len(TEXTS)} texts)")


if __name__ == "__main__":
    main()
