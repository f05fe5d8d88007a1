"""Studies over a suite's cells: what CODER* re-ranking changed, and the quality of each text bank (no Prefect)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from coderflow.storage.arrays import load_images, load_texts
from coderflow.storage.db import query
from coderflow.storage.layout import Layout, text_model_id
from coderflow.tasks.classify.methods import LOGIT_SCALE, coder_rerank, coder_scores, margin, top_k

# CODER's and CODER*'s zero-shot predictions of one run side by side; CODER's margin is the one CODER* thresholds
RERANK_SQL = """
SELECT a.sample_key, a.label, a.pred AS coder, b.pred AS rerank, a.margin
FROM predictions a JOIN predictions b USING (run_id, dataset, split, sample_key)
WHERE a.run_id = ? AND a.method = 'coder' AND b.method = 'coder_rerank' AND a.label IS NOT NULL
  AND a.shots IS NULL AND b.shots IS NULL AND a.seed IS NULL AND b.seed IS NULL
ORDER BY a.sample_key
"""
RERANK_COLUMNS = ("rows", "reranked", "corrected", "broken", "changed", "unchanged", "coder_top1", "rerank_top1")


def rerank_counts(
    label: np.ndarray, coder: np.ndarray, rerank: np.ndarray, margin: np.ndarray, threshold: float
) -> dict[str, Any]:
    """What CODER* did relative to CODER: rows re-ranked (CODER's softmax margin below `threshold`), corrected
    (wrong -> right), broken (right -> wrong), changed (other prediction, both wrong) and unchanged (re-ranked, same
    prediction); with both top-1 accuracies."""
    label, coder, rerank = (np.asarray(v) for v in (label, coder, rerank))
    reranked = np.asarray(margin, dtype=np.float32) < threshold
    was, now = coder == label, rerank == label
    moved = coder != rerank
    return {
        "rows": len(label), "reranked": int(reranked.sum()), "corrected": int((~was & now).sum()),
        "broken": int((was & ~now).sum()), "changed": int((moved & ~was & ~now).sum()),
        "unchanged": int((reranked & ~moved).sum()),
        "coder_top1": float(was.mean()) if len(label) else None, "rerank_top1": float(now.mean()) if len(label) else None,
    }  # fmt: skip


def rerank_study(layout: Layout, cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished cell whose run has coder and coder_rerank predictions: rerank_counts of its stored
    predictions at the run's classify.rerank_threshold (stored: True), then one per threshold of the run's
    classify.rerank_thresholds, re-scored from the stored embeddings (rerank_at_thresholds; stored: False)."""
    out = []
    for cell in cells:
        if not cell.get("run_id") or cell.get("status") == "failed":
            continue
        t = query(layout, RERANK_SQL, params=[cell["run_id"]])
        if t.num_rows == 0:
            continue
        found = query(layout, "SELECT config FROM runs WHERE run_id = ?", params=[cell["run_id"]]).to_pylist()
        config = json.loads((found[0]["config"] if found else None) or "{}")
        classify = config.get("classify") or {}
        threshold = float(classify.get("rerank_threshold", 0.1))
        cols = {c: t[c].to_numpy(zero_copy_only=False) for c in ("label", "coder", "rerank", "margin")}
        counts = rerank_counts(cols["label"], cols["coder"], cols["rerank"], cols["margin"], threshold)
        where = {"dataset": cell["dataset"], "model": cell["model"], "bank": cell["bank"], "axis": cell["axis"]}
        out.append({**where, "threshold": threshold, "stored": True, **counts})
        grid = classify.get("rerank_thresholds") or []
        if grid:
            out += [{**where, **r, "stored": False} for r in rerank_at_thresholds(layout, cell["run_id"], config, grid)]
    return out


def rerank_at_thresholds(
    layout: Layout, run_id: str, config: dict[str, Any], thresholds: Sequence[float]
) -> list[dict[str, Any]]:
    """CODER* of a zero-shot run re-scored at each threshold from the stored image and text embeddings (the run's
    bank, or its `classify.banks` entry for coder_rerank, and its rerank_k): rerank_counts per threshold."""
    where = query(
        layout, "SELECT any_value(dataset) AS dataset, any_value(split) AS split FROM predictions WHERE run_id = ? "
        "AND method = 'coder_rerank'", params=[run_id],
    ).to_pylist()  # fmt: skip
    run = query(layout, "SELECT model_id, textbank_id FROM runs WHERE run_id = ?", params=[run_id]).to_pylist()
    if not run or not where or where[0]["split"] is None:
        return []
    classify = config.get("classify") or {}
    bank_id = (classify.get("banks") or {}).get("coder_rerank") or run[0]["textbank_id"]
    images = load_images(layout, run[0]["model_id"], where[0]["dataset"], where[0]["split"])
    bank = load_texts(layout, bank_id, run[0]["model_id"])
    known = images.labels >= 0
    cosines = images.x[known] @ bank.t.T
    scores = coder_scores(cosines, bank.class_index, bank.text_type, bank.n_classes)
    coder = top_k(scores, 1)[:, 0]
    gap = margin(LOGIT_SCALE * scores)
    out = []
    for t in sorted(set(thresholds)):
        r = coder_rerank(cosines, scores, bank.class_index, bank.text_type, bank.other_class_index, bank.n_classes,
                         threshold=t, k=int(classify.get("rerank_k", 5)))  # fmt: skip
        out.append({"threshold": float(t), **rerank_counts(images.labels[known], coder, r.pred, gap, t)})
    return out


# words that carry no content of their own in a description ("a photo of a cat, which has ...")
FILLER = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "photo",
        "picture",
        "image",
        "which",
        "has",
        "have",
        "is",
        "are",
        "with",
        "its",
        "it",
        "this",
        "that",
        "looks",
        "like",
        "similar",
        "to",
        "kind",
        "type",
        "features",
    ]
)
DESCRIPTIVE = ("att", "ana", "syno", "ovo")  # text types meant to add something to the class name


def restates_class(text: str, class_name: str) -> bool:
    """Whether a text says nothing beyond its class name: only the name's words and filler words (FILLER) remain."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    return not (words - set(re.findall(r"[a-z0-9]+", class_name.lower())) - FILLER)


def mean_pairwise_cosine(embeddings: np.ndarray) -> float | None:
    """Mean cosine over the distinct pairs of unit vectors (rows); None for fewer than two."""
    e = np.asarray(embeddings, dtype=np.float64)
    n = len(e)
    if n < 2:
        return None
    total = e.sum(axis=0)
    return float((total @ total - np.einsum("ij,ij->", e, e)) / (n * (n - 1)))


def bank_quality(texts: list[dict[str, Any]], n_classes: int | None = None) -> list[dict[str, Any]]:
    """Per text type of one bank: count, duplicates (a text repeated within its class and type), texts restating
    the class name (restates_class, descriptive types only), classes without att/ana texts (on the 'att' and 'ana'
    rows), mean cosine to the class's first 'name' text and mean pairwise cosine within a class (averaged over
    classes). `texts`: rows with class_index, class_name, text_type, text and embedding (a unit vector, or None)."""
    name_vec: dict[int, np.ndarray] = {}
    for t in texts:
        if t["text_type"] == "name" and t.get("embedding") is not None:
            name_vec.setdefault(t["class_index"], np.asarray(t["embedding"], dtype=np.float64))
    classes = {t["class_index"] for t in texts}
    n_classes = n_classes or len(classes)
    rows = []
    for tt in sorted({t["text_type"] for t in texts}):
        of = [t for t in texts if t["text_type"] == tt]
        seen: set[tuple[int, str]] = set()
        duplicates = 0
        for t in of:
            k = (t["class_index"], " ".join(t["text"].lower().split()))
            duplicates += k in seen
            seen.add(k)
        to_name = [
            float(np.dot(np.asarray(t["embedding"], dtype=np.float64), name_vec[t["class_index"]]))
            for t in of
            if t.get("embedding") is not None and t["class_index"] in name_vec
        ]
        within = []
        for c in sorted({t["class_index"] for t in of}):
            vecs = [t["embedding"] for t in of if t["class_index"] == c and t.get("embedding") is not None]
            m = mean_pairwise_cosine(np.asarray(vecs)) if len(vecs) > 1 else None
            if m is not None:
                within.append(m)
        rows.append({
            "text_type": tt, "count": len(of), "duplicates": duplicates,
            "restating": sum(restates_class(t["text"], t["class_name"]) for t in of) if tt in DESCRIPTIVE else None,
            "classes_without": n_classes - len({t["class_index"] for t in of}) if tt in ("att", "ana") else None,
            "cosine_to_name": float(np.mean(to_name)) if to_name and tt != "name" else None,
            "cosine_within_class": float(np.mean(within)) if within else None,
        })  # fmt: skip
    return rows


BANK_TEXTS_SQL = """
SELECT t.class_index, t.class_name, t.text_type, t.text, e.embedding
FROM texts t LEFT JOIN (SELECT text_id, any_value(embedding) AS embedding FROM text_embeddings WHERE model_id = ?
                        GROUP BY text_id) e USING (text_id)
WHERE t.textbank_id = ?
ORDER BY t.text_index
"""


def bank_study(layout: Layout, cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """bank_quality of each (text bank, model) of the suite's cells, with the bank's mean zero-shot top-1 of clip and
    coder over the cells that used it. Rows: bank, textbank_id, model_id and bank_quality's columns."""
    out = []
    for bank_id, model_id in sorted({(c["textbank_id"], c["model_id"]) for c in cells if c.get("textbank_id")}):
        texts = query(layout, BANK_TEXTS_SQL, params=[text_model_id(model_id or ""), bank_id]).to_pylist()
        if not texts:
            continue
        runs = [c["run_id"] for c in cells if c.get("textbank_id") == bank_id and c.get("model_id") == model_id
                and c.get("run_id") and c.get("status") != "failed"]  # fmt: skip
        accuracy = {}
        if runs:
            acc = query(
                layout, "SELECT method, avg(value) AS top1 FROM metrics WHERE list_contains(?, run_id) AND metric = "
                "'top1' AND class_index IS NULL AND shots IS NULL AND method IN ('clip', 'coder') GROUP BY ALL",
                params=[runs],
            ).to_pylist()  # fmt: skip
            accuracy = {r["method"]: r["top1"] for r in acc}
        bank = next(c["bank"] for c in cells if c.get("textbank_id") == bank_id)
        for r in bank_quality(texts):
            out.append({"bank": bank, "textbank_id": bank_id, "model_id": model_id, **r,
                        "clip_top1": accuracy.get("clip"), "coder_top1": accuracy.get("coder")})  # fmt: skip
    return out
