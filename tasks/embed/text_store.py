"""Stored text embeddings of one text model, looked up by text content: each text is embedded once, ever."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coderflow.storage.integrity import intact
from coderflow.storage.layout import Layout, content_id, text_id
from coderflow.storage.parquet_io import read_table, write_rows
from coderflow.storage.schemas import TEXT_EMBEDDINGS
from coderflow.tasks.embed.encode import encode_texts
from coderflow.tasks.embed.model import LoadedModel


class TextStore:
    """Embeddings under `text_embeddings/<text model>/part-*.parquet`, keyed by text id (a hash of the text).

    `encode(texts)` answers from memory, then from the stored parts, and encodes only the rest (trimmed padding,
    tasks/embed/encode.py); `flush()` writes what was encoded as one new part. Building a text bank (look-alike
    filter, pair choice, synonym senses) and embedding it share one store, so no text is embedded twice.
    """

    def __init__(self, layout: Layout, text_model_id: str, load: Callable[[], LoadedModel]) -> None:
        self.layout, self.text_model_id, self._load = layout, text_model_id, load
        self._vectors: dict[str, np.ndarray] = {}
        self._pending: list[str] = []
        self.encoded = 0

    def _parts(self) -> list:
        parts = sorted(self.layout.text_embedding_dir(self.text_model_id).glob("part-*.parquet"))
        return [p for p in parts if intact(p)]  # a damaged part is moved aside: its texts are embedded again

    def stored_ids(self) -> set[str]:
        """Ids of every text embedded with this model so far (stored or pending)."""
        ids = {i for p in self._parts() for i in read_table(p, ["text_id"])["text_id"].to_pylist()}
        return ids | set(self._pending)

    def _read(self, wanted: set[str]) -> None:
        ask = pa.array(sorted(wanted), pa.string())
        for part in self._parts():
            table = read_table(part, ["text_id", "embedding"])
            table = table.filter(pc.is_in(table["text_id"], value_set=ask))
            if table.num_rows:
                matrix = np.asarray(table["embedding"].combine_chunks().flatten(), np.float32)
                matrix = matrix.reshape(table.num_rows, -1)
                self._vectors.update(zip(table["text_id"].to_pylist(), matrix, strict=True))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings of `texts` in order; only texts never embedded with this model are encoded."""
        ids = [text_id(t) for t in texts]
        unknown = {i for i in ids if i not in self._vectors}
        if unknown:
            self._read(unknown)
        self.add({i: t for i, t in zip(ids, texts, strict=True) if i not in self._vectors})
        if not ids:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._vectors[i] for i in ids])

    def add(self, todo: dict[str, str]) -> None:
        """Encode texts (text id -> text) known not to be stored yet, without looking them up."""
        if todo:
            vecs = encode_texts(list(todo.values()), self._load())
            self._vectors.update(zip(todo, vecs, strict=True))
            self._pending += list(todo)
            self.encoded += len(todo)

    def flush(self) -> int:
        """Write the embeddings encoded since the last flush as one part; returns how many."""
        if not self._pending:
            return 0
        ids = sorted(set(self._pending))
        rows = [{"text_id": i, "model_id": self.text_model_id, "embedding": self._vectors[i].tolist()} for i in ids]
        write_rows(rows, TEXT_EMBEDDINGS, self.layout.text_embedding_part(self.text_model_id, content_id(*ids)))
        self._pending = []
        return len(ids)
