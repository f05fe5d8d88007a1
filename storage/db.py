"""The DuckDB database: views over every stored Parquet table, and a guarded read-only query entry point."""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from coderflow.storage.atomic import no_space_message
from coderflow.storage.layout import Layout, shared_mode
from coderflow.storage.schemas import CLASSES, REFERENCE_RESULTS, VIEWS

log = logging.getLogger("coderflow")

SQL_DIR = Path(__file__).with_name("sql")
QUERIES_DIR = SQL_DIR / "queries"  # the commands' own SQL (`coderflow runs`, `compare`): no canned questions
MACROS_FILE = Path(__file__).with_name("macros.sql")  # mcnemar_p, paired_predictions, paired_comparison
REFERENCE_FILE = Path(__file__).with_name("reference_results.csv")  # published numbers (reference_results.md)
# one row naming the work directory the views were built for and their version: a copied or moved work directory,
# or a database from another version of these views, gets its views rebuilt
ROOT_VIEW = "coderflow_root"
VIEWS_VERSION = 5  # 3: fewshot_support.sampling and source_path; 4: suite_cells; 5: suite_stats, leaderboard

# one row per (image, text) cosine of the dense and top-k CODER files, with the text's id from its bank
CODER_COSINES = """
WITH long AS (
    SELECT sample_key, dataset, split, label, model_id, textbank_id,
           unnest(coalesce(indices, CAST(range(len(vector)) AS INTEGER[]))) AS text_index,
           unnest(coalesce("values", vector)) AS cosine
    FROM coder
)
SELECT long.*, t.text_id FROM long LEFT JOIN texts t USING (textbank_id, text_index)
"""


def _classes_select(layout: Layout) -> str:
    """The `classes` view: one row per line of each dataset's classnames.txt, named by its _dataset.json."""
    names, identity = layout.dataset_file_globs()
    if not _has_files(layout, names):
        return _empty_select(CLASSES)
    lines = "list_filter(list_transform(string_split(content, chr(10)), lambda x: trim(x)), lambda x: x <> '')"
    named = (
        f"SELECT parse_dirpath(filename) AS dir, name FROM read_json({_quote(identity)}, filename = true, "
        "columns = {'name': 'VARCHAR'})"
        if _has_files(layout, identity)
        else "SELECT NULL::VARCHAR AS dir, NULL::VARCHAR AS name WHERE false"
    )
    return f"""
WITH f AS (SELECT parse_dirpath(filename) AS dir, {lines} AS names FROM read_text({_quote(names)})),
     d AS ({named})
SELECT coalesce(d.name, parse_filename(f.dir)) AS dataset,
       CAST(unnest(range(len(f.names))) AS INTEGER) AS class_index, unnest(f.names) AS class_name
FROM f LEFT JOIN d USING (dir)
"""


def reference_results() -> pa.Table:
    """The published numbers bundled with coderflow (storage/reference_results.csv) as a typed table."""
    import pyarrow.csv as pacsv

    options = pacsv.ConvertOptions(column_types=REFERENCE_RESULTS, strings_can_be_null=True)
    return (
        pacsv.read_csv(REFERENCE_FILE, convert_options=options).select(REFERENCE_RESULTS.names).cast(REFERENCE_RESULTS)
    )


WORKDIR_FOLDERS = ("shards", "runs", "texts")  # a work directory has at least one of them
_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# EXPLAIN [ANALYZE] [(options)] <statement>: ANALYZE runs the statement, so the inner one must be a SELECT too
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?(?P<inner>.*)$", re.I | re.S)


class QueryError(ValueError):
    """A query that coderflow refuses or that DuckDB could not run; the message says why and what to do."""


def _empty_select(schema: pa.Schema) -> str:
    rel = duckdb.from_arrow(schema.empty_table())
    cols = ", ".join(f'CAST(NULL AS {t}) AS "{n}"' for n, t in zip(rel.columns, rel.types, strict=True))
    return f"SELECT {cols} WHERE false"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _connect(layout: Layout, read_only: bool = False, path: Path | None = None) -> duckdb.DuckDBPyConnection:
    """A connection to the views database (or the database file `path`) that can read the work directory (also at an
    fsspec URL)."""
    path = path or layout.database
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    fs = None if layout.is_local else layout.root.fs
    if fs is not None and not con.filesystem_is_registered(
        fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    ):
        con.register_filesystem(fs)  # DuckDB reads s3://, gs://, ... through the same fsspec client
    return con


def _allowed_prefixes(layout: Layout) -> list[str]:
    """The work directory as DuckDB names its files: a path, or the URL in both forms fsspec globs can give."""
    workdir = layout.root
    if layout.is_local:
        return [f"{workdir}/"]
    return sorted({f"{workdir}/", f"{workdir.protocol}://{workdir.path}/"})


def _has_files(layout: Layout, pattern: str) -> bool:
    return bool(glob.glob(pattern) if layout.is_local else layout.root.fs.glob(pattern))


def is_workdir(layout: Layout) -> bool:
    """Whether the work directory exists and holds one of coderflow's folders (shards/, runs/, texts/)."""
    return any((layout.root / name).is_dir() for name in WORKDIR_FOLDERS)


def check_workdir(layout: Layout) -> None:
    """Refuse, in one line, a work directory that does not exist or is not coderflow's (a reader creates nothing)."""
    if not is_workdir(layout):
        raise QueryError(
            f"{layout.root} is not a coderflow work directory (no shards/, runs/ or texts/ folder): pass --workdir "
            "of one, or run `coderflow demo` first"
        )


def refresh_views(layout: Layout) -> Path:
    """(Re)create the views `texts`, `image_embeddings`, ... over the files now in the work directory, the derived
    views `classes`, `coder_cosines` and `leaderboard`, the table `reference_results` and the macros of
    storage/macros.sql.

    The views read absolute paths (any DuckDB client can open the file in place); the view `coderflow_root` records
    the work directory they were built for, so that readers of a copied or moved one rebuild them first.
    """
    if layout.is_local:
        layout.root.mkdir(parents=True, exist_ok=True)
    # A new database file beside the old one, renamed over it when complete: a reader holding the old file (a long
    # `coderflow query`, any DuckDB client) keeps reading it and never blocks the refresh; the next reader opens the
    # new one. Readers never see a half-built database.
    fresh = layout.database.with_name(f".{layout.database.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fresh.unlink(missing_ok=True)
    try:
        with _connect(layout, path=fresh) as con:
            for name, pattern in layout.view_globs().items():
                _create_parquet_view(con, layout, name, pattern)
            try:
                con.execute(f"CREATE OR REPLACE VIEW classes AS {_classes_select(layout)}")
            except duckdb.Error as exc:  # a damaged classnames.txt or _dataset.json: the view is empty, not the run
                log.warning("view classes left empty: %s (see `coderflow doctor`)", _short(exc))
                con.execute(f"CREATE OR REPLACE VIEW classes AS {_empty_select(CLASSES)}")
            con.execute(f"CREATE OR REPLACE VIEW coder_cosines AS {CODER_COSINES}")
            con.execute(f"CREATE OR REPLACE VIEW leaderboard AS {sql_file('leaderboard', QUERIES_DIR)}")
            con.register("reference_rows", reference_results())
            con.execute("CREATE OR REPLACE TABLE reference_results AS SELECT * FROM reference_rows")
            con.unregister("reference_rows")
            con.execute(MACROS_FILE.read_text())
            con.execute(
                f"CREATE OR REPLACE VIEW {ROOT_VIEW} AS SELECT {_quote(str(layout.root))} AS root, "
                f"{VIEWS_VERSION} AS version"
            )
            con.execute("CHECKPOINT")  # everything in the file itself, no write-ahead log beside it
        shared_mode(fresh)
        os.replace(fresh, layout.database)
    except (duckdb.IOException, OSError) as exc:  # a full disk: one line naming the file, like every other writer
        if getattr(exc, "errno", None) != errno.ENOSPC and "No space left on device" not in str(exc):
            raise
        raise OSError(
            errno.ENOSPC, f"could not write {layout.database}: {no_space_message(fresh, layout.database)}"
        ) from exc
    finally:
        fresh.unlink(missing_ok=True)
        Path(f"{fresh}.wal").unlink(missing_ok=True)
    return layout.database


def _short(exc: BaseException, limit: int = 300) -> str:
    return " ".join(str(exc).split())[:limit]


def _create_parquet_view(con: duckdb.DuckDBPyConnection, layout: Layout, name: str, pattern: str) -> list[str]:
    """Create one view over the Parquet files matching `pattern`. When DuckDB cannot read them all (a truncated or
    damaged file), the view lists the readable files only and each unreadable one is named in a warning (and by
    `coderflow doctor`): one damaged file never blocks a run or a query. Returns the files left out."""
    body = _empty_select(VIEWS[name])  # every column of the schema, NULL where older files lack it
    if not _has_files(layout, pattern):
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
        return []
    read = "SELECT * FROM read_parquet({}, union_by_name = true)"
    try:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body} UNION ALL BY NAME {read.format(_quote(pattern))}")
        con.execute(f"SELECT count(*) FROM {name}").fetchone()  # reads every file's footer
        return []
    except duckdb.Error:
        pass
    files = sorted(glob.glob(pattern) if layout.is_local else layout.root.fs.glob(pattern))
    readable, skipped = [], []
    for file in files:
        try:
            con.execute(f"SELECT count(*) FROM read_parquet({_quote(file)})").fetchone()
            readable.append(file)
        except duckdb.Error as exc:
            skipped.append(file)
            log.warning("view %s leaves out %s: unreadable (%s); see `coderflow doctor`", name, file, _short(exc, 160))
    if readable:
        listed = "[" + ", ".join(_quote(f) for f in readable) + "]"
        body += f" UNION ALL BY NAME {read.format(listed)}"
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
    return skipped


def views_root(con: duckdb.DuckDBPyConnection) -> str | None:
    """The work directory the database's views were built for; None for a database that does not record it or
    holds another version of the views."""
    try:
        row = con.execute(f"SELECT root, version FROM {ROOT_VIEW}").fetchone()
    except duckdb.Error:
        return None
    return row[0] if row and row[1] == VIEWS_VERSION else None


def views_problem(layout: Layout) -> str | None:
    """What is wrong with the views database (unreadable, or built for another place or version); None if fine or
    not built yet."""
    if not layout.database.exists():
        return None  # built by the next run or query
    try:
        with _connect(layout, read_only=True) as con:
            root = views_root(con)
    except duckdb.Error as exc:
        return f"unreadable ({_short(exc, 120)})"
    return None if root == str(layout.root) else "views built for another work directory or version"


def _views_for(layout: Layout) -> duckdb.DuckDBPyConnection:
    """A read-only connection to views over this work directory: built, or rebuilt when they name another one."""
    if layout.database.exists():
        try:
            con = _connect(layout, read_only=True)
        except duckdb.Error as exc:  # a damaged file: it holds views only, so it is rebuilt from the stored files
            log.warning("%s is unreadable (%s): rebuilt from the stored files", layout.database, _short(exc, 160))
        else:
            if views_root(con) == str(layout.root):
                return con
            con.close()  # views over another directory (a copy or a move) or from an older coderflow: rebuild them
    try:
        refresh_views(layout)
    except duckdb.Error as exc:
        raise QueryError(
            f"could not build the views of {layout.root} in {layout.database}: {' '.join(str(exc).split())[:300]}: "
            "try again when other coderflow commands on it have finished"
        ) from exc
    return _connect(layout, read_only=True)


def connect_read_only(layout: Layout) -> duckdb.DuckDBPyConnection:
    """A read-only connection that can read files under the work directory only (views rebuilt if it moved)."""
    check_workdir(layout)
    con = _views_for(layout)
    con.execute(f"SET allowed_directories = [{', '.join(map(_quote, _allowed_prefixes(layout)))}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_read_only(sql: str) -> list[str]:
    """Split SQL into statements and refuse anything but SELECT/EXPLAIN (writes, COPY, ATTACH, SET, ...)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"could not parse the SQL: {str(exc).splitlines()[0]}") from exc
    if not statements:
        raise QueryError("the SQL is empty: pass a SELECT statement")
    for st in statements:
        if st.type not in _ALLOWED:
            kind = st.type.name
            raise QueryError(f"{kind} statements are refused: `coderflow query` is read-only, use SELECT")
        if st.type == duckdb.StatementType.EXPLAIN:
            _check_explained(st.query)
    return [st.query for st in statements]


def _check_explained(sql: str) -> None:
    """Refuse EXPLAIN of anything but a SELECT (EXPLAIN ANALYZE COPY ... TO would write a file); fails closed."""
    match = _EXPLAIN.match(sql)
    try:
        inner = duckdb.extract_statements(match["inner"]) if match else []
    except duckdb.Error:
        inner = []
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        got = inner[0].type.name if len(inner) == 1 else "an unrecognised statement"
        raise QueryError(f"EXPLAIN of {got} is refused: `coderflow query` is read-only, EXPLAIN a SELECT only")


DEFAULT_QUERY_TIMEOUT = 300.0  # seconds; `coderflow query --timeout`


def query(
    layout: Layout,
    sql: str,
    where: dict[str, Any] | None = None,
    order_by: str | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    params: list[Any] | dict[str, Any] | None = None,
) -> pa.Table:
    """Run read-only SQL over the views; the last statement's result is returned, its rows filtered by `where`
    (column -> value, bound as parameters: a value is never pasted into SQL), then ordered and limited. `timeout`
    (seconds) interrupts a query that runs longer (a runaway recursive CTE): QueryError."""
    statements = check_read_only(sql)
    con = connect_read_only(layout)
    timer = threading.Timer(timeout, con.interrupt) if timeout else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        for st in statements[:-1]:
            con.execute(st).fetchall()  # each earlier statement runs to completion, its rows dropped
        if params is not None:  # `?` placeholders of the (last) statement
            return con.sql(statements[-1], params=params).to_arrow_table()
        if not (where or order_by or limit is not None):
            return con.sql(statements[-1]).to_arrow_table()
        last = statements[-1].rstrip().rstrip(";")
        if limit is not None:  # the outer LIMIT replaces the question's own
            last = re.sub(r"\s+LIMIT\s+\d+\s*$", "", last, flags=re.IGNORECASE)
        cond = " WHERE " + " AND ".join(f'q."{c}" = ?' for c in where) if where else ""
        tail = (f" ORDER BY {order_by}" if order_by else "") + (f" LIMIT {int(limit)}" if limit is not None else "")
        return con.sql(f"SELECT * FROM ({last}) AS q{cond}{tail}", params=list((where or {}).values())).to_arrow_table()
    except duckdb.Error as exc:
        if timer is not None and not timer.is_alive() and "interrupt" in str(exc).lower():
            raise QueryError(f"the query ran longer than {timeout:g} s and was stopped: raise --timeout") from exc
        raise QueryError(f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from exc
    finally:
        if timer is not None:
            timer.cancel()
        con.close()


def csv_ready(table: pa.Table) -> pa.Table:
    """Nested, map and binary columns as JSON text (hex for bytes), which CSV can hold."""
    import json

    def cell(v: Any) -> Any:
        return v.hex() if isinstance(v, bytes) else v

    columns = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        t = col.type
        if pa.types.is_nested(t) or pa.types.is_map(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            values = [None if v is None else json.dumps(v, default=cell) if not isinstance(v, bytes) else v.hex()
                      for v in col.to_pylist()]  # fmt: skip
            columns[name] = pa.array(values, pa.string())
        else:
            columns[name] = col
    return pa.table(columns)


def canned_queries() -> dict[str, str]:
    """The bundled questions: name -> the first comment line of its SQL file."""
    out = {}
    for path in sorted(SQL_DIR.glob("*.sql")):
        first = path.read_text().split("\n", 1)[0]
        out[path.stem] = first.removeprefix("--").strip()
    return out


def sql_file(name: str, directory: Path = SQL_DIR) -> str:
    """The text of a canned question in storage/sql, or of a command's query in QUERIES_DIR (name with or without
    .sql)."""
    path = directory / (name if name.endswith(".sql") else f"{name}.sql")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.sql")))
        raise QueryError(f"no canned query {name!r}: choose one of {known}")
    return path.read_text()
