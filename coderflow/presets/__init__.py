"""Protocol presets: per-dataset settings of the reference implementations, as data (one YAML file per dataset)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent


def preset_names() -> list[str]:
    """Names of the bundled presets (`coderflow/presets/<name>.yaml`)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@cache
def load_preset(name: str) -> dict[str, Any]:
    """{"title", "config" (config keys it sets), "sources" (dotted key -> reference file)} of one preset."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset: unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def merge_under(base: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` laid over `base`, recursively for mappings: what `data` sets wins, `base` fills the rest."""
    out = dict(base)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_under(out[key], value)
        else:
            out[key] = value
    return out
