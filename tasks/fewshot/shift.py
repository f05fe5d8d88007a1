"""Distribution shift: which source class each class of a shifted test set is, matched by name (no Prefect)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def class_key(name: str) -> str:
    """A class name as the match compares it: NFKC, case-folded, '_' and '-' as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", name).casefold().replace("_", " ").replace("-", " ")
    return " ".join(text.split())


def class_columns(source: Sequence[str], target: Sequence[str], target_name: str, source_name: str) -> list[int]:
    """For each class of the test set `target_name`, in its order, the index of the source class of the same name
    (ImageNet-A and -R have 200 of ImageNet's 1000); a class the source lacks is refused, naming it."""
    index: dict[str, int] = {}
    for i, name in enumerate(source):
        index.setdefault(class_key(name), i)
    missing = [name for name in target if class_key(name) not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"test dataset {target_name!r} has {len(missing)} classes that source dataset {source_name!r} lacks "
            f"({shown}): a support set can only score its own classes; give a test set whose class names are among "
            "the source's (dataset.classnames_file renames classes)"
        )
    columns = [index[class_key(name)] for name in target]
    if len(set(columns)) < len(columns):
        raise ValueError(
            f"test dataset {target_name!r} has classes that are one source class of {source_name!r} by name: "
            "give each class a distinct name"
        )
    return columns
