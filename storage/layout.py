"""Where every artifact lives under the work directory: the single owner of paths."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from upath import UPath

DEFAULT_WORKDIR = "coderflow-data"
ENV_WORKDIR = "CODERFLOW_HOME"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _umask() -> int:
    mask = os.umask(0o022)  # read it (the only way), then put it back
    os.umask(mask)
    return mask


UMASK = _umask()


def shared_mode(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by tempfile (0600 / 0700) the permissions the umask allows, as open()
    and mkdir() would: a work directory shared with other users or workers stays readable to them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def safe_name(value: str) -> str:
    """Turn an arbitrary identifier (model name, hub id, dataset name) into one path component."""
    cleaned = _SAFE.sub("-", value).strip("-.")
    if not cleaned:
        raise ValueError(f"cannot make a path component from {value!r}: use letters, digits, '.', '_' or '-'")
    return cleaned


def content_id(*parts: str | bytes, length: int = 16) -> str:
    """A short, stable content hash of the given parts (used for text ids, bank ids, run ids)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:length]


def text_id(text: str) -> str:
    """Content id of a text string: the same string has the same id in every bank (and every text embedding store)."""
    return content_id("text", text)


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def file_sha256(path: str | os.PathLike[str] | StoragePath) -> str:
    """The sha256 hex digest of a file's bytes, local or at a URL (streamed in 1 MiB blocks)."""
    h = hashlib.sha256()
    with storage_path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


HASH_CHARS = 16  # hex characters of a content hash in derived file names


def part_hash(path: str | os.PathLike[str] | StoragePath) -> str | None:
    """The shard content hash in a derived file name `<stem>.<hash>.parquet`, or None (a file of another scheme)."""
    stem = Path(str(path)).name.removesuffix(".parquet")
    _, _, tail = stem.rpartition(".")
    return tail if len(tail) == HASH_CHARS and all(c in "0123456789abcdef" for c in tail) else None


def is_weights_file(pretrained: str | None) -> bool:
    """Whether `pretrained` names a local checkpoint file (rather than a tag or hub id)."""
    return bool(pretrained) and Path(str(pretrained)).expanduser().is_file()


def model_id(name: str, pretrained: str | None) -> str:
    """Stable id of an architecture + weights: `ViT-B-32__openai`, `ViT-S-32-alt__random`, `RN50__file-<sha12>`."""
    if not pretrained:
        tag = "random"
    elif is_weights_file(pretrained):
        p = Path(pretrained).expanduser().resolve()
        st = p.stat()
        tag = f"file-{_file_digest(str(p), st.st_size, st.st_mtime_ns)}"
    else:
        tag = pretrained
    return safe_name(f"{name}__{tag}")


def with_precision(model_id_: str, precision: str) -> str:
    """A model id that says its precision unless fp32 (`ViT-B-32__openai__bf16`): bf16 embeddings are other data."""
    return model_id_ if precision == "fp32" else f"{model_id_}__{precision}"


ADAPTER_PREFIX = "adapter-"


def adapted_model_id(base_model_id: str, adapter_id: str | None) -> str:
    """`<base>__<adapter id>` for a model with IMO adapters in its image encoder, else the base id."""
    return f"{base_model_id}__{adapter_id}" if adapter_id else base_model_id


def text_model_id(model_id: str) -> str:
    """The model id whose text encoder a model uses: adapters change only the image encoder."""
    return model_id.split(f"__{ADAPTER_PREFIX}", 1)[0]


# A local path (pathlib) or a path on an fsspec file system (universal_pathlib: s3://, gs://, memory://, ...).
StoragePath = Path | UPath


def is_local(path: StoragePath) -> bool:
    """Whether a storage path is on the local file system (where renames are atomic and DuckDB files can live)."""
    return isinstance(path, Path)


def storage_path(value: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """A path object for a local path or file:// URL (pathlib.Path), or for any other fsspec URL (UPath)."""
    if isinstance(value, UPath) and not is_local(value):
        return value
    text = str(value)
    if "://" not in text:
        return Path(text)
    try:
        url = UPath(text)
        url.fs  # noqa: B018 (creating the file system finds a missing package, e.g. s3fs, before any work)
    except (ImportError, ValueError) as exc:
        raise ValueError(
            f"cannot use {text!r}: {exc}. Install the fsspec package for its protocol on this machine and every "
            "worker (s3://: pip install s3fs; gs://: pip install gcsfs)"
        ) from exc
    return Path(url.path) if url.protocol in ("file", "local") else url


def resolve_path(value: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """An absolute local path (`~` expanded), or the URL as given."""
    path = storage_path(value)
    return path.expanduser().resolve() if is_local(path) else path


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one path component and of a whole path (Linux, macOS: 1024)
WORKDIR_ROOM = 1024  # bytes left for the deepest path coderflow writes inside a work directory


def check_workdir(path: Path) -> Path:
    """A local work directory must be short enough for the files inside it, and a folder (or not exist yet, under
    a folder): anything else is refused in one line before any work."""
    text = str(path)
    shown = text if len(text) <= 120 else f"{text[:60]}...{text[-30:]} ({len(text):,} characters)"
    if any(len(part.encode()) > NAME_MAX for part in path.parts) or len(text.encode()) > PATH_MAX - WORKDIR_ROOM:
        raise ValueError(
            f"work directory {shown} is too long (at most {NAME_MAX} bytes a folder name and "
            f"{PATH_MAX - WORKDIR_ROOM} in all, to leave room for the files inside): pass a shorter --workdir"
        )
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise ValueError(f"work directory {shown} {what}, not a folder: pass a folder to --workdir (made if missing)")
    return path


def resolve_workdir(workdir: str | os.PathLike[str] | StoragePath | None = None) -> StoragePath:
    """The work directory: the explicit argument, else $CODERFLOW_HOME, else ./coderflow-data; a URL stays a URL.
    A local one is checked (check_workdir)."""
    path = resolve_path(workdir or os.environ.get(ENV_WORKDIR) or DEFAULT_WORKDIR)
    return check_workdir(path) if is_local(path) else path


def local_cache_dir() -> Path:
    """This machine's cache folder for coderflow (derived data only: safe to delete)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "coderflow"


@dataclass(frozen=True)
class Layout:
    """Paths of every artifact under one work directory."""

    root: StoragePath

    @classmethod
    def at(cls, workdir: str | os.PathLike[str] | StoragePath | None = None) -> Layout:
        return cls(resolve_workdir(workdir))

    # datasets -------------------------------------------------------------------------------------
    def shard_dir(self, dataset: str, split: str) -> StoragePath:
        return self.root / "shards" / safe_name(dataset) / safe_name(split)

    def shard_pattern(self, dataset: str, split: str) -> str:
        return str(self.shard_dir(dataset, split) / f"{safe_name(dataset)}-{safe_name(split)}-%06d.tar")

    def classnames_file(self, dataset: str) -> StoragePath:
        return self.root / "shards" / safe_name(dataset) / "classnames.txt"

    def templates_file(self, dataset: str) -> StoragePath:
        return self.root / "shards" / safe_name(dataset) / "templates.txt"

    def dataset_dir(self, dataset: str) -> StoragePath:
        return self.root / "shards" / safe_name(dataset)

    def dataset_identity(self, dataset: str) -> StoragePath:
        """Which dataset name, kind and source own `shards/<dataset>/` (see tasks.ingest.checks.check_identity)."""
        return self.dataset_dir(dataset) / "_dataset.json"

    # texts ----------------------------------------------------------------------------------------
    def textbank_file(self, textbank_id: str) -> StoragePath:
        return self.root / "texts" / f"{textbank_id}.parquet"

    def textbank_report(self, textbank_id: str) -> StoragePath:
        """How the bank was generated: counts, dropped candidates, pairs, LLM usage."""
        return self.root / "texts" / f"{textbank_id}.report.json"

    def textbank_by_inputs(self, inputs_id: str) -> StoragePath:
        """Names the bank generated from one set of inputs (classes, templates, texts config, model)."""
        return self.root / "texts" / "by-inputs" / f"{inputs_id}.txt"

    def textbank_alias(self, dataset: str) -> StoragePath:
        """Small file naming the newest text bank built for a dataset."""
        return self.root / "texts" / f"latest-{safe_name(dataset)}.txt"

    # embeddings -----------------------------------------------------------------------------------
    def text_embedding_dir(self, model_id: str) -> StoragePath:
        return self.root / "embeddings" / "text" / safe_name(model_id)

    def text_embedding_part(self, model_id: str, part_id: str) -> StoragePath:
        return self.text_embedding_dir(model_id) / f"part-{part_id}.parquet"

    def image_embedding_dir(self, model_id: str, dataset: str, split: str) -> StoragePath:
        return self.root / "embeddings" / "image" / safe_name(model_id) / safe_name(dataset) / safe_name(split)

    def image_embedding_part(self, model_id: str, dataset: str, split: str, shard: str, shard_hash: str) -> StoragePath:
        """Embeddings of one shard, keyed by its content hash: `<shard stem>.<sha256[:16]>.parquet`."""
        return (
            self.image_embedding_dir(model_id, dataset, split) / f"{Path(shard).stem}.{shard_hash[:HASH_CHARS]}.parquet"
        )

    # adapters -------------------------------------------------------------------------------------
    def adapter_file(self, base_model_id: str, adapter_id: str) -> StoragePath:
        return self.root / "adapters" / safe_name(base_model_id) / f"{adapter_id}.pt"

    def adapter_train_dir(self, base_model_id: str, train_id: str) -> StoragePath:
        """Per-epoch checkpoints of one training configuration (what a resumed training starts from)."""
        return self.root / "adapters" / safe_name(base_model_id) / "training" / train_id

    # CODER vectors ------------------------------------------------------------------------------------
    def coder_dir(self, model_id: str, textbank_id: str, dataset: str, split: str) -> StoragePath:
        return self.root / "coder" / safe_name(model_id) / textbank_id / safe_name(dataset) / safe_name(split)

    def coder_part(
        self, model_id: str, textbank_id: str, dataset: str, split: str, image_part: str, fmt: str = "dense"
    ) -> StoragePath:
        """CODER vectors of one image-embedding part in one format ('dense' or 'top<k>'): the image part's name (so
        its shard's content hash) with the format, so a dense file is never taken for a sparse one."""
        name = Path(image_part).name.removesuffix(".parquet")
        return self.coder_dir(model_id, textbank_id, dataset, split) / f"{name}.{fmt}.parquet"

    def derived_files(self, dataset: str, split: str | None = None) -> list[StoragePath]:
        """Every image-embedding and CODER file computed from a dataset's split (all splits when None), any model."""
        ds, sp = safe_name(dataset), safe_name(split) if split else "*"
        out: list[StoragePath] = []
        for pattern in (f"embeddings/image/*/{ds}/{sp}/*.parquet", f"coder/*/*/{ds}/{sp}/*.parquet"):
            out.extend(p for p in self.root.glob(pattern) if p.is_file())
        return sorted(out)

    # caches ---------------------------------------------------------------------------------------
    @property
    def llm_cache_dir(self) -> StoragePath:
        return self.root / "cache" / "llm"

    # runs -----------------------------------------------------------------------------------------
    @property
    def runs_dir(self) -> StoragePath:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> StoragePath:
        return self.runs_dir / safe_name(run_id)

    def run_file(self, run_id: str, name: str) -> StoragePath:
        return self.run_dir(run_id) / name

    # suites ---------------------------------------------------------------------------------------
    @property
    def suites_dir(self) -> StoragePath:
        return self.root / "suites"

    def suite_dir(self, suite_id: str) -> StoragePath:
        return self.suites_dir / safe_name(suite_id)

    def suite_cell_file(self, suite_id: str, cell_id: str) -> StoragePath:
        """One cell's record (SUITE_CELLS), written when the cell ends: a killed suite keeps the cells it finished."""
        return self.suite_dir(suite_id) / "cells" / f"{safe_name(cell_id)}.parquet"

    def suite_file(self, suite_id: str, name: str) -> StoragePath:
        """A file of a suite run: suite.yaml (the suite file as validated), plan.json (its cells in run order)."""
        return self.suite_dir(suite_id) / name

    def suite_stats_file(self, suite_id: str) -> StoragePath:
        """Paired statistics of every cell's methods against clip (SUITE_STATS), written when the suite ends."""
        return self.suite_dir(suite_id) / "stats.parquet"

    def suite_benchmark_file(self, suite_id: str) -> StoragePath:
        """The suite's accuracies in CLIP_benchmark's columns (one row per dataset, model, method and shots)."""
        return self.suite_dir(suite_id) / "benchmark.csv"

    @property
    def is_local(self) -> bool:
        return is_local(self.root)

    @property
    def database(self) -> Path:
        """The DuckDB file (views only): in the work directory, or in the local cache when that is a URL."""
        if is_local(self.root):
            return self.root / "coderflow.duckdb"
        return (
            local_cache_dir() / "db" / f"{safe_name(str(self.root))[:80]}-{content_id(str(self.root), length=8)}.duckdb"
        )

    # globs the DuckDB views read --------------------------------------------------------------------
    def dataset_file_globs(self) -> tuple[str, str]:
        """Every dataset's classnames.txt and _dataset.json (the `classes` view)."""
        return str(self.root / "shards" / "*" / "classnames.txt"), str(self.root / "shards" / "*" / "_dataset.json")

    def view_globs(self) -> dict[str, str]:
        r = self.root
        return {
            "texts": str(r / "texts" / "*.parquet"),
            "text_embeddings": str(r / "embeddings" / "text" / "*" / "*.parquet"),
            "image_embeddings": str(r / "embeddings" / "image" / "*" / "*" / "*" / "*.parquet"),
            "coder": str(r / "coder" / "*" / "*" / "*" / "*" / "*.parquet"),
            "predictions": str(r / "runs" / "*" / "predictions.parquet"),
            "metrics": str(r / "runs" / "*" / "metrics.parquet"),
            "runs": str(r / "runs" / "*" / "run.parquet"),
            "fewshot_support": str(r / "runs" / "*" / "support.parquet"),
            "suite_cells": str(r / "suites" / "*" / "cells" / "*.parquet"),
            "suite_stats": str(r / "suites" / "*" / "stats.parquet"),
        }
