"""open_clip's model catalog, read without importing open_clip: architecture names, pretrained tags, where their
weights are cached; the model-name, tag and weights checks that preflight and model loading share."""

from __future__ import annotations

import ast
import importlib.util
import os
import socket
import sys
from functools import cache
from pathlib import Path

from coderflow.storage.layout import is_weights_file


def _open_clip_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("open_clip is not installed: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def open_clip_models() -> frozenset[str]:
    """open_clip's architecture names (its model_configs/*.json, what list_models() returns), without importing it."""
    return frozenset(p.stem for p in (_open_clip_dir() / "model_configs").glob("*.json"))


@cache
def open_clip_pretrained() -> dict[str, frozenset[str]]:
    """Architecture -> pretrained tags, read from open_clip/pretrained.py's `_PRETRAINED` table without importing
    open_clip (4 s of torch and timm); empty when the file no longer has that shape (the check is then skipped)."""
    try:
        tree = ast.parse((_open_clip_dir() / "pretrained.py").read_text())
    except (OSError, SyntaxError):
        return {}
    tables: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            tables[node.targets[0].id] = node.value

    def tags(value: ast.expr | None) -> frozenset[str]:
        if isinstance(value, ast.Name):
            value = tables.get(value.id)
        if isinstance(value, ast.Call):
            return frozenset(k.arg for k in value.keywords if k.arg)
        if isinstance(value, ast.Dict):
            return frozenset(k.value for k in value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
        return frozenset()

    table = tables.get("_PRETRAINED")
    if not isinstance(table, ast.Dict):
        return {}
    out = {k.value: tags(v) for k, v in zip(table.keys, table.values, strict=True) if isinstance(k, ast.Constant)}
    return out | {f"{k}-quickgelu": v for k, v in out.items()}  # open_clip adds the quick-gelu twins at import


def check_model(name: str, pretrained: str | None) -> None:
    """The architecture is open_clip's (or an hf-hub: id); the pretrained tag is known for it, or names a file."""
    if name.startswith("hf-hub:"):
        return
    models = open_clip_models()
    if name not in models and "open_clip" in sys.modules:  # configs registered at run time (add_model_config)
        models = models | frozenset(sys.modules["open_clip"].list_models())
    if name not in models:
        close = sorted(m for m in models if name.lower().replace("_", "-") in m.lower())[:5]
        hint = f" (close: {', '.join(close)})" if close else " such as ViT-B-32 or ViT-S-32-alt"
        raise ValueError(f"unknown open_clip model {name!r} (--model.name): pick one of open_clip.list_models(){hint}")
    if not pretrained or pretrained.startswith("hf-hub:") or is_weights_file(pretrained):
        return
    if any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        raise ValueError(f"--pretrained {pretrained!r}: no such checkpoint file; pass an existing file or a tag")
    known = open_clip_pretrained()
    tags = known.get(name)
    if known and pretrained.lower().replace("-", "_") not in {t.lower().replace("-", "_") for t in tags or ()}:
        offer = f"its tags: {', '.join(sorted(tags))}" if tags else "it has no pretrained tags; pass a checkpoint file"
        raise ValueError(f"--pretrained {pretrained!r} is not an open_clip tag of {name} ({offer})")


@cache
def _pretrained_table() -> dict[str, dict[str, dict[str, str]]]:
    """Architecture -> tag -> {'url': ..., 'hf_hub': ...} from open_clip/pretrained.py, read without importing it."""
    try:
        tree = ast.parse((_open_clip_dir() / "pretrained.py").read_text())
    except (OSError, SyntaxError):
        return {}
    tables = {
        n.targets[0].id: n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
    }

    def entries(value: ast.expr | None) -> dict[str, dict[str, str]]:
        if isinstance(value, ast.Name):
            value = tables.get(value.id)
        pairs = []
        if isinstance(value, ast.Call):
            pairs = [(k.arg, k.value) for k in value.keywords if k.arg]
        elif isinstance(value, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(value.keys, value.values, strict=True) if isinstance(k, ast.Constant)]
        out = {}
        for tag, call in pairs:
            if isinstance(call, ast.Call):
                out[str(tag)] = {
                    k.arg: k.value.value
                    for k in call.keywords
                    if k.arg in ("url", "hf_hub") and isinstance(k.value, ast.Constant) and k.value.value
                }
        return out

    table = tables.get("_PRETRAINED")
    if not isinstance(table, ast.Dict):
        return {}
    out = {k.value: entries(v) for k, v in zip(table.keys, table.values, strict=True) if isinstance(k, ast.Constant)}
    return out | {f"{k}-quickgelu": v for k, v in out.items()}


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def weights_cached(name: str, pretrained: str) -> bool | None:
    """Whether open_clip's weights file for the tag is already on disk (Hugging Face hub cache or open_clip's URL
    cache ~/.cache/clip); None when the tag's source cannot be told (then nothing is refused)."""
    entry = _pretrained_table().get(name, {}).get(pretrained) or _pretrained_table().get(name, {}).get(
        pretrained.lower().replace("-", "_")
    )
    if not entry:
        return None
    if entry.get("url") and (Path("~/.cache/clip").expanduser() / os.path.basename(entry["url"])).is_file():
        return True
    if entry.get("hf_hub"):
        repo, filename = os.path.split(entry["hf_hub"])
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        names += [f"{Path(n).stem}.safetensors" for n in names] + ["open_clip_model.safetensors"]
        snapshots = _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots"
        if any(next(snapshots.glob(f"*/{n}"), None) for n in names):
            return True
    return False


def _unreachable(host: str = "huggingface.co") -> str | None:
    """Why the weights cannot be downloaded now (HF_HUB_OFFLINE, no connection within 3 s), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc.strerror or exc}"
    return None


def check_weights(name: str, pretrained: str | None) -> None:
    """A pretrained tag whose weights are neither cached nor downloadable now: refused before any work."""
    if not pretrained or pretrained.startswith("hf-hub:") or is_weights_file(pretrained):
        return
    if weights_cached(name, pretrained) is not False:
        return
    why = _unreachable()
    if why:
        raise ValueError(
            f"--pretrained {pretrained!r}: the {name} weights are not in the cache ({_hf_cache()}) and {why}: "
            "connect to the network once to download them (HF_HUB_OFFLINE=1 reads only the cache), or pass a local "
            "checkpoint file (--pretrained /path/to/weights.pt)"
        )
