"""Zero-shot scoring methods (CLIP, DCLIP, CuPL, WaffleCLIP, CODER, CODER*) on embeddings and CODER cosines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from coderflow.storage.schemas import TEXT_TYPES

LOGIT_SCALE = 100.0  # CLIP's learned temperature, rounded: logits = 100 * cosine

# A small built-in vocabulary for WaffleCLIP's random-word descriptors (the paper samples from a large English list).
_WAFFLE_WORDS = """
    able acid angle apple arch area army baby back ball band bank base bath bell belt bird blade block blood board
    boat body bone book boot bottle bowl box brain branch brass bread brick bridge brush bucket bulb button cake
    camera card carpet cart chain chalk cheese chest chin circle clock cloud coal coat collar comb copper cord cork
    cotton cover crack crown cup curtain cushion door drain drawer dress drop dust engine eye face farm feather fence
    finger flag floor fly fold foot fork frame garden glove goat grain grass gun hair hammer hand hat heart hook horn
    house island jelly jewel kettle key knee knife knot leaf library line lip lock map match meal milk moon mouth
    muscle nail neck needle nerve net nose nut office orange oven paint paper parcel pen pencil pin pipe plane plate
    pocket pot potato prison pump rail rat ray ring rod roof root sail school scissors screw seed sheep shelf ship
    shirt shoe skin skirt snake sock spade sponge spoon spring square stamp star station stem stick stitch stone
    street sugar sun table tail thread throat thumb ticket toe tongue tooth town train tray tree trousers umbrella
    wall watch wheel whip whistle window wing wire worm
"""
WAFFLE_WORDS: tuple[str, ...] = tuple(_WAFFLE_WORDS.split())


# ---------------------------------------------------------------------------------------------------- validation
def _embeddings(images: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, t = np.asarray(images, dtype=np.float32), np.asarray(texts, dtype=np.float32)
    if x.ndim != 2 or t.ndim != 2 or x.shape[1] != t.shape[1]:
        raise ValueError(
            f"images {x.shape} and texts {t.shape} must be 2-D with the same embedding dim: embed both with one model"
        )
    return x, t


def _class_index(class_index: np.ndarray, n_texts: int, n_classes: int) -> np.ndarray:
    ci = np.asarray(class_index)
    if ci.shape != (n_texts,):
        raise ValueError(f"class_index has shape {ci.shape} for {n_texts} texts: pass one entry per text-bank row")
    if n_classes < 1 or (ci.size and (ci.min() < 0 or ci.max() >= n_classes)):
        bad = ci[(ci < 0) | (ci >= n_classes)][:5].tolist()
        raise ValueError(f"class_index values {bad} are outside 0..{n_classes - 1}: pass the dataset's n_classes")
    return ci.astype(np.int64)


def _text_type(text_type: np.ndarray | Sequence[str], n_texts: int) -> np.ndarray:
    tt = np.asarray(text_type, dtype=object)
    if tt.shape != (n_texts,):
        raise ValueError(f"text_type has shape {tt.shape} for {n_texts} texts: pass one entry per text-bank row")
    bad = sorted(set(tt.tolist()) - set(TEXT_TYPES))
    if bad:
        raise ValueError(f"text_type values {bad} are not in {TEXT_TYPES}: pass the text bank's text_type column")
    return tt


def bank_metadata(bank: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class_index int64, text_type object, other_class_index int64 with -1 for null) from a TEXTS table."""
    other = bank.column("other_class_index").fill_null(-1)
    return (
        np.asarray(bank.column("class_index").to_numpy(), dtype=np.int64),
        np.asarray(bank.column("text_type").to_pylist(), dtype=object),
        np.asarray(other.to_numpy(), dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------------- helpers
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (int32) of the k highest scores per row, highest first; ties go to the lower class index."""
    s = np.asarray(scores)
    k = min(k, s.shape[1])
    if k < 1:
        raise ValueError(f"k={k}: ask for at least one class")
    if k * 8 >= s.shape[1]:  # few classes: one full sort
        return np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int32)
    # many classes: the k largest by partition, ordered by (score desc, class index); rows with a tie at the k-th
    # value (where the partition's choice among equal scores is arbitrary) take the full stable sort
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    out = np.take_along_axis(part, order, axis=1)
    tied = (s >= vals.min(axis=1, keepdims=True)).sum(axis=1) > k
    if tied.any():
        out[tied] = np.argsort(-s[tied], axis=1, kind="stable")[:, :k]
    return out.astype(np.int32)


def margin(logits: np.ndarray) -> np.ndarray:
    """Confidence margin: top-1 minus top-2 softmax probability of `logits`, per row (float32, in [0, 1]).

    Pass logits, not cosines: multiply cosine-valued scores (every method here but `clip_logits`) by LOGIT_SCALE.
    With a single class the margin is 1.
    """
    return margin_confidence(logits)[0]


def margin_confidence(logits: np.ndarray, pred: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(margin, confidence) per row from one softmax of `logits`: the margin as `margin`, the confidence the softmax
    probability of the predicted class (`pred`, default the arg-max), both float32 in [0, 1]."""
    p = softmax(logits)
    rows = np.arange(len(p))
    conf = p[rows, p.argmax(axis=1) if pred is None else np.asarray(pred, dtype=np.int64)].astype(np.float32)
    if p.shape[1] < 2:
        return np.ones(len(p), dtype=np.float32), conf
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    return (top2[:, 0] - top2[:, 1]).astype(np.float32), conf


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def _group_sum(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Column sums of values (N x M) per group id of each column (M,) -> (N x n_groups), zero for empty groups."""
    out = np.zeros((values.shape[0], n_groups), dtype=np.float32)
    if values.shape[1]:
        order = np.argsort(groups, kind="stable")
        present, starts = np.unique(groups[order], return_index=True)
        out[:, present] = np.add.reduceat(values[:, order], starts, axis=1)
    return out


def _missing(mask_counts: np.ndarray, what: str) -> None:
    empty = np.flatnonzero(mask_counts == 0)
    if empty.size:
        raise ValueError(f"classes {empty[:10].tolist()} have no {what} texts: add them to the text bank")


def class_mean_embeddings(texts: np.ndarray, class_index: np.ndarray, n_classes: int) -> np.ndarray:
    """L2-normalised mean text embedding per class (n_classes x D); every class needs at least one row."""
    t = np.asarray(texts, dtype=np.float32)
    ci = _class_index(class_index, len(t), n_classes)
    counts = np.bincount(ci, minlength=n_classes)
    _missing(counts, "selected")
    sums = np.zeros((n_classes, t.shape[1]), dtype=np.float32)
    np.add.at(sums, ci, t)
    return l2_normalize(sums / counts[:, None])


def product(x: np.ndarray, w_t: np.ndarray, device: str = "cpu") -> np.ndarray:
    """x @ w_t (N x D @ D x n_classes): numpy on device "cpu", else torch on `device` in row blocks (device.py)."""
    if device == "cpu":
        return x @ w_t
    from coderflow.tasks.classify.device import scores  # torch is imported only for a model on another device

    return scores(x, w_t, device)


def mean_cosine_scores(
    images: np.ndarray, texts: np.ndarray, class_index: np.ndarray, n_classes: int, device: str = "cpu"
) -> np.ndarray:
    """Score of class c = mean cosine of the image to the class's text rows (N x n_classes).

    The mean of the cosines is the cosine-product with the class's mean text row (x.t_1 + ... + x.t_k = x.(t_1 + ...
    + t_k)), so one (N x D) @ (D x n_classes) product replaces the (N x M) cosine matrix: 10-20x less work for
    WaffleCLIP's and DCLIP's many texts per class. The product runs on `device` (see `product`)."""
    x, t = _embeddings(images, texts)
    ci = _class_index(class_index, len(t), n_classes)
    counts = np.bincount(ci, minlength=n_classes)
    _missing(counts, "selected")
    means = _group_sum(t.T, ci, n_classes) / counts.astype(np.float32)  # D x n_classes
    return product(x, means, device)


# ---------------------------------------------------------------------------------------------------- methods
def clip_logits(
    images: np.ndarray,
    texts: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
    scale: float = LOGIT_SCALE,
    device: str = "cpu",
) -> np.ndarray:
    """CLIP prompt ensemble: logits = scale * X @ W.T (W: see `ensemble_classifier`; the product on `device`)."""
    x, t = _embeddings(images, texts)
    return scale * product(x, ensemble_classifier(t, class_index, text_type, n_classes).T, device)


def ensemble_classifier(
    texts: np.ndarray, class_index: np.ndarray, text_type: np.ndarray | Sequence[str], n_classes: int
) -> np.ndarray:
    """CLIP's zero-shot classifier W (n_classes x D): the normalised mean of each class's 'template' prompts (its
    'name' prompts in a bank without templates, such as a WaffleCLIP bank)."""
    t = np.asarray(texts, dtype=np.float32)
    tt = _text_type(text_type, len(t))
    ci = _class_index(class_index, len(t), n_classes)
    keep = tt == "template" if (tt == "template").any() else tt == "name"
    return class_mean_embeddings(t[keep], ci[keep], n_classes)


def dclip_scores(
    images: np.ndarray,
    texts: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
    device: str = "cpu",
) -> np.ndarray:
    """DCLIP (Menon & Vondrick 2023): mean cosine over the class's 'att' descriptors; no 'att' -> its 'name' texts.
    The product runs on `device`."""
    x, t = _embeddings(images, texts)
    tt = _text_type(text_type, len(t))
    ci = _class_index(class_index, len(t), n_classes)
    has_att = np.bincount(ci[tt == "att"], minlength=n_classes) > 0
    keep = (tt == "att") | ((tt == "name") & ~has_att[ci])
    return mean_cosine_scores(x, t[keep], ci[keep], n_classes, device)


CUPL_SOURCE = "import:cupl:"  # the `source` of the rows `coderflow texts import --format cupl` adds (CuPL sentences)


def cupl_sentence_rows(source: np.ndarray | Sequence[str] | None, n_texts: int) -> np.ndarray:
    """Which rows of a bank are CuPL sentences: those imported from a CuPL prompt file (source `import:cupl:...`).
    A bank without a source column (None) has none."""
    if source is None:
        return np.zeros(n_texts, dtype=bool)
    src = np.asarray(source, dtype=object)
    if src.shape != (n_texts,):
        raise ValueError(f"source has shape {src.shape} for {n_texts} texts: pass one entry per text-bank row")
    return np.array([str(v).startswith(CUPL_SOURCE) for v in src.tolist()], dtype=bool)


def cupl_scores(
    images: np.ndarray,
    texts: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
    sentences: np.ndarray,
    mode: Literal["sentences", "both"] = "sentences",
    device: str = "cpu",
) -> np.ndarray:
    """CuPL (Pratt et al. 2023; sarahpratt/CuPL classify_imagenet.py zeroshot_classifier_gpt): cosine to the
    normalised mean of the class's L2-normalised CuPL sentences (`sentences`: the rows flagged in `sentences`, see
    cupl_sentence_rows), with its `template` prompts added to the mean when mode="both" (use_both=True). No other
    row (name, att, ana, syno, ovo) counts. A class without CuPL sentences is scored on its template prompts alone
    (CLIP's classifier for it). The product runs on `device`."""
    x, t = _embeddings(images, texts)
    tt = _text_type(text_type, len(t))
    ci = _class_index(class_index, len(t), n_classes)
    if mode not in ("sentences", "both"):
        raise ValueError(f"classify.cupl_mode must be 'sentences' or 'both', got {mode!r}")
    sent = np.asarray(sentences, dtype=bool)
    if sent.shape != (len(t),):
        raise ValueError(f"sentences has shape {sent.shape} for {len(t)} texts: pass one flag per text-bank row")
    has_sentences = np.bincount(ci[sent], minlength=n_classes) > 0
    template = tt == "template"
    keep = sent | (template & ~has_sentences[ci]) if mode == "sentences" else sent | template
    return product(x, class_mean_embeddings(l2_normalize(t[keep]), ci[keep], n_classes).T, device)


def waffle_shape(classnames: Sequence[str]) -> tuple[int, int, int, int]:
    """WaffleCLIP's descriptor shape from the class names (ExplainableML/WaffleCLIP waffle_tools.py:462-481):
    (words per word descriptor, characters kept per word, character groups, characters per group)."""
    words = [c.replace("_", " ").split() or [c] for c in classnames]
    n_words = max(round(float(np.mean([len(w) for w in words]))), 1)
    word_length = max(round(float(np.mean([np.mean([len(x) for x in w]) for w in words]))), 1)
    groups = round(float(np.mean([c.count(" ") for c in classnames]))) + 1
    n_chars = int(np.ceil(np.mean([max(len(x) for x in c.split(" ") or [c]) for c in classnames])))
    n_chars += groups - n_chars % groups  # the reference rounds up to a multiple of the groups (a full extra one)
    return n_words, word_length, groups, n_chars // groups


def descriptor_sentence(descriptor: str) -> str:
    """DCLIP's make_descriptor_sentence (sachit-menon/classify_by_description_release; WaffleCLIP waffle_tools.py
    :214-222): 'which is' for descriptors starting with 'a'/'an'/'used' (a plain string prefix, as the reference),
    'which' for has/often/typically/may/can, else 'which has'."""
    if descriptor.startswith(("a", "an")):
        return f"which is {descriptor}"
    if descriptor.startswith(("has", "often", "typically", "may", "can")):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


def waffle_texts(
    classnames: Sequence[str],
    n_pairs: int = 15,
    seed: int = 0,
    vocabulary: Sequence[str] = WAFFLE_WORDS,
    characters: str = "abcdefghijklmnopqrstuvwxyz",
) -> list[list[str]]:
    """WaffleCLIP (Roth et al. 2023) prompts: for each class, 2 * n_pairs texts (list index = class index).

    As WaffleCLIP's 'waffle' mode (waffle_tools.py:458-505): one set of random descriptors, drawn once from `seed`
    and shared by every class (only the class name differs): n_pairs pairs of a random-word descriptor (words drawn
    with replacement from `vocabulary`, cut to the class names' mean word length, as many as their mean word count)
    and a random-character descriptor (groups of random `characters` joined by ', ', sized by `waffle_shape`), each
    written "A photo of a {c}, which has {descriptor}.". Score them with `waffle_scores` (mean cosine per class).
    Deviation: the reference draws characters from its GPT descriptor files; here from `characters`.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs={n_pairs}: give at least 1 descriptor pair")
    words = sorted({w for w in vocabulary if w})
    if not words:
        raise ValueError("the waffle vocabulary is empty: pass a list of words")
    n_words, word_length, groups, per_group = waffle_shape(classnames)
    rng = np.random.default_rng(seed)
    letters = np.array(list(characters))
    descriptors = []
    for _ in range(n_pairs):
        descriptors.append(" ".join(words[int(i)][:word_length] for i in rng.integers(0, len(words), n_words)))
        descriptors.append(", ".join("".join(rng.choice(letters, size=per_group)) for _ in range(groups)))
    return [[f"A photo of a {name}, {descriptor_sentence(d)}." for d in descriptors] for name in classnames]


def waffle_scores(
    images: np.ndarray, texts: np.ndarray, class_index: np.ndarray, n_classes: int, device: str = "cpu"
) -> np.ndarray:
    """WaffleCLIP score: mean cosine over the class's waffle prompts (embedded from `waffle_texts`), on `device`."""
    return mean_cosine_scores(images, texts, class_index, n_classes, device)


def coder_scores(
    cosines: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
) -> np.ndarray:
    """CODER zero-shot scores from CODER vectors (cosines = X @ T.T, N x M in text-bank row order).

    Score of class c = mean of the list [every 'att' cosine of c, every 'ana' cosine of c, max over c's 'name' and
    'syno' cosines]: one term for the name/synonym group, one per attribute or analogous-class text. A class with
    no att/ana texts scores its max term; 'ovo' texts are not used here (see `coder_rerank`). For a model on
    another torch device, `coder_on_device` computes the same scores there.
    """
    c = np.asarray(cosines, dtype=np.float32)
    if c.ndim != 2:
        raise ValueError(f"cosines has shape {c.shape}: pass the (images x texts) CODER matrix")
    tt = _text_type(text_type, c.shape[1])
    ci = _class_index(class_index, c.shape[1], n_classes)
    aa = np.flatnonzero((tt == "att") | (tt == "ana"))
    ns = np.flatnonzero((tt == "name") | (tt == "syno"))
    n_aa = np.bincount(ci[aa], minlength=n_classes).astype(np.float32)
    has_max = np.bincount(ci[ns], minlength=n_classes) > 0
    _missing(n_aa + has_max, "name, syno, att or ana")
    total = _group_sum(c[:, aa], ci[aa], n_classes)
    if ns.size:
        order = ns[np.argsort(ci[ns], kind="stable")]
        present, starts = np.unique(ci[order], return_index=True)
        total[:, present] += np.maximum.reduceat(c[:, order], starts, axis=1)
    return total / (n_aa + has_max)


def coder_on_device(
    images: np.ndarray,
    texts: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    n_classes: int,
    device: str,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(coder_scores, cosines to the 'ovo' rows in bank order) by torch on `device` (device.coder_products), for a
    model on a GPU: the N x texts cosine matrix is never formed. The sum of a class's att/ana cosines is one product
    with the sum of its att/ana rows (x.t_1 + ... + x.t_k = x.(t_1 + ... + t_k): equal up to float rounding), the
    max a scatter of its name/syno cosines; the ovo cosines are all CODER* (`coder_rerank`) reads."""
    from coderflow.tasks.classify.device import coder_products  # torch only for a model on a device

    x, t = _embeddings(images, texts)
    tt = _text_type(text_type, len(t))
    ci = _class_index(class_index, len(t), n_classes)
    aa = (tt == "att") | (tt == "ana")
    ns = np.flatnonzero((tt == "name") | (tt == "syno"))
    n_aa = np.bincount(ci[aa], minlength=n_classes).astype(np.float32)
    has_max = np.bincount(ci[ns], minlength=n_classes) > 0
    _missing(n_aa + has_max, "name, syno, att or ana")
    sums = _group_sum(t[aa].T, ci[aa], n_classes).T  # n_classes x D: the att/ana rows summed per class
    w = np.concatenate([sums, t[ns], t[tt == "ovo"]])
    return coder_products(x, w, ci[ns], n_aa + has_max, device, rows)


@dataclass(frozen=True)
class RerankResult:
    """CODER* output: new predictions, the candidates in their new order, and what was re-ranked."""

    pred: np.ndarray  # (N,) int32 new top-1
    top_k: np.ndarray  # (N, K) int32 candidates, re-ordered for re-ranked rows, score order otherwise
    reranked: np.ndarray  # (N,) bool: margin below the threshold
    n_reranked: int
    n_changed: int  # re-ranked rows whose top-1 changed
    n_pairs_consulted: int = 0  # candidate pairs {a, b} of re-ranked rows, counted per row
    n_pairs_covered: int = 0  # of those, pairs with ovo texts in both directions (the others score 0)


def coder_rerank(
    cosines: np.ndarray,
    scores: np.ndarray,
    class_index: np.ndarray,
    text_type: np.ndarray | Sequence[str],
    other_class_index: np.ndarray,
    n_classes: int,
    threshold: float = 0.5,
    k: int = 5,
) -> RerankResult:
    """CODER*: re-rank uncertain predictions with one-to-one ('ovo') texts; never looks at labels.

    A row is re-ranked when the margin of softmax(100 * scores) (top-1 minus top-2 probability) is below
    `threshold` (a threshold above 1 re-ranks every row). Its top-k classes by score (k is capped at n_classes) are
    the candidates. For candidates a, b: gap(a, b) = mean cosine to
    the ovo texts of (class a, other b) minus mean cosine to those of (class b, other a); gap is 0 unless both
    directions have ovo texts. A candidate's score is the mean of its gaps to the other k - 1 candidates; candidates
    are re-ordered by that score (ties keep the original order) and the first is the new prediction.
    """
    c = np.asarray(cosines, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float32)
    if c.ndim != 2 or s.shape != (len(c), n_classes):
        raise ValueError(f"cosines {c.shape} and scores {s.shape}: pass (N x texts) cosines and (N x n_classes) scores")
    tt = _text_type(text_type, c.shape[1])
    ci = _class_index(class_index, c.shape[1], n_classes)
    oc = np.asarray(other_class_index, dtype=np.int64)
    if oc.shape != ci.shape:
        raise ValueError(f"other_class_index has shape {oc.shape} for {len(ci)} texts: pass one entry per text")
    if k < 2 or n_classes < 2:
        raise ValueError(f"k={k} with n_classes={n_classes}: re-ranking needs k >= 2 candidates from >= 2 classes")
    k = min(k, n_classes)
    ovo = np.flatnonzero(tt == "ovo")
    if ((oc[ovo] < 0) | (oc[ovo] >= n_classes)).any():
        raise ValueError(f"ovo texts have other_class_index {sorted(set(oc[ovo].tolist()))[:5]}: set it to a class")

    candidates = top_k(s, k)
    reranked = margin(LOGIT_SCALE * s) < threshold
    new_top = candidates.copy()
    rows = np.flatnonzero(reranked)
    covered = 0
    if rows.size and ovo.size:
        # one group per (class, other) pair that has ovo texts; pair_id[a, b] = its group, or -1
        pair = ci[ovo] * n_classes + oc[ovo]
        pairs, group = np.unique(pair, return_inverse=True)
        pair_id = np.full(n_classes * n_classes, -1, dtype=np.int64)
        pair_id[pairs] = np.arange(len(pairs))
        pair_id = pair_id.reshape(n_classes, n_classes)
        means = _group_sum(c[np.ix_(rows, ovo)], group, len(pairs)) / np.bincount(group).astype(np.float32)

        cand = candidates[rows]  # (R, K)
        ab = pair_id[cand[:, :, None], cand[:, None, :]]  # (R, K, K) group of (a, b)
        ba = ab.transpose(0, 2, 1)
        valid = (ab >= 0) & (ba >= 0)
        mean_ab = np.take_along_axis(means, ab.clip(min=0).reshape(len(rows), -1), axis=1).reshape(ab.shape)
        gap = np.where(valid, mean_ab - mean_ab.transpose(0, 2, 1), 0.0)
        covered = int(valid.sum()) // 2  # valid is symmetric with a false diagonal
        cand_score = gap.sum(axis=2) / (k - 1)  # gap(a, a) is 0: diagonal never valid
        order = np.argsort(-cand_score, axis=1, kind="stable")
        new_top[rows] = np.take_along_axis(cand, order, axis=1)
    pred = new_top[:, 0]
    return RerankResult(
        pred=pred,
        top_k=new_top,
        reranked=reranked,
        n_reranked=int(reranked.sum()),
        n_changed=int((pred != candidates[:, 0]).sum()),
        n_pairs_consulted=len(rows) * k * (k - 1) // 2,
        n_pairs_covered=covered,
    )
