"""Atomic Parquet and small-file IO: write to a temp file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto the target, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:  # disk full, quota, permissions: say which file, leave no partial one behind
        if str(target) in str(exc):
            raise
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise (
            OSError(exc.errno, f"could not write {target}: {reason}")
            if exc.errno
            else OSError(f"could not write {target}: {reason}")
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    table = table.select(schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)  # a cast copies: skip it when types match


def _options(schema: pa.Schema) -> dict:
    """zstd; dictionary encoding for string columns only (on float lists it is slow and makes files bigger)."""
    return {"compression": "zstd", "use_dictionary": [f.name for f in schema if pa.types.is_string(f.type)]}


def write_table(table: pa.Table, target: str | os.PathLike[str], schema: pa.Schema | None = None) -> Path:
    """Write a table atomically as Parquet, cast to `schema` when given (so every file has the same types)."""
    if schema is not None:
        table = _conform(table, schema)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, **_options(table.schema))
    return Path(target)


def write_stream(tables: Iterable[pa.Table], schema: pa.Schema, target: str | os.PathLike[str]) -> int:
    """Stream tables (row groups) into one Parquet file atomically; memory holds one table at a time. Returns rows."""
    rows = 0
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, schema, **_options(schema)) as writer:
        for table in tables:
            writer.write_table(_conform(table, schema))
            rows += table.num_rows
    return rows


def write_rows(rows: list[dict], schema: pa.Schema, target: str | os.PathLike[str]) -> Path:
    """Write a list of row dicts atomically with the given schema."""
    return write_table(pa.Table.from_pylist(rows, schema=schema), target)


def write_text(text: str, target: str | os.PathLike[str]) -> Path:
    """Write a small text file (manifest, alias) atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path, columns=columns)


def read_tables(paths: list[Path], schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """Concatenate several Parquet files of one schema (an empty typed table when there are none)."""
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if not tables:
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return pa.concat_tables(tables)
