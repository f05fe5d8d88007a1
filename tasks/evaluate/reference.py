"""A run's numbers against published ones (the `reference_results` table): differences and far-off baselines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Baselines whose published numbers a faithful setup reproduces closely; further off than FAR suggests a
# preprocessing (weights, resolution, normalisation) or template problem rather than a method effect.
BASELINES = ("clip", "dclip", "cupl", "waffle")
FAR = 0.05  # 5 accuracy points


def reference_key(config: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(dataset, backbone, pretrained) of a run's configuration as the reference table names them: the protocol
    preset (coderflow/presets) if the run used one, else the dataset name; the open_clip architecture and tag."""
    dataset = config.get("preset") or (config.get("dataset") or {}).get("name") or ""
    model = config.get("model") or {}
    return str(dataset).lower(), str(model.get("name") or ""), model.get("pretrained")


def against_reference(
    results: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]], key: tuple[str, str, str | None]
) -> list[dict[str, Any]]:
    """Each (method, shots, metric) result next to every published value for the same dataset, backbone and
    pretrained weights: rows with value, reference, difference (value - reference) and source."""
    dataset, backbone, pretrained = key
    by_key: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in references:
        if (r["dataset"], r["backbone"], r["pretrained"]) == (dataset, backbone, pretrained):
            by_key.setdefault((r["method"], r["shots"], r["metric"]), []).append(r)
    rows = []
    for res in results:
        for ref in by_key.get((res["method"], res.get("shots"), res["metric"]), []):
            rows.append(
                {"method": res["method"], "shots": res.get("shots"), "metric": res["metric"], "value": res["value"],
                 "reference": ref["value"], "difference": res["value"] - ref["value"], "source": ref["source"]}
            )  # fmt: skip
    return rows


def reference_warnings(
    rows: Iterable[Mapping[str, Any]], key: tuple[str, str, str | None], far: float = FAR
) -> list[str]:
    """One line per baseline result further than `far` from a published value of the same setting."""
    dataset, backbone, pretrained = key
    out = []
    for r in rows:
        if r["method"] in BASELINES and r["metric"] == "top1" and abs(r["difference"]) > far:
            side = "below" if r["difference"] < 0 else "above"
            out.append(
                f"{r['method']} top-1 {r['value']:.4f} is {abs(r['difference']) * 100:.1f} points {side} the "
                f"reference {r['reference']:.4f} ({r['source']}) for {dataset} {backbone} {pretrained}: check the "
                "image preprocessing (weights, resolution) and the templates (--preset) before comparing methods"
            )
    return out


def accuracy_results(metrics: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the `accuracy_per_method` query as (method, shots, metric, value) results for `against_reference`."""
    return [
        {"method": m["method"], "shots": m["shots"], "metric": metric, "value": m[metric]}
        for m in metrics
        for metric in ("top1", "top5", "mean_per_class_recall")
        if m[metric] is not None
    ]


def stored_against_reference(
    layout: Any, config: Mapping[str, Any], metrics: Iterable[Mapping[str, Any]]
) -> tuple[tuple[str, str, str | None], list[dict[str, Any]]]:
    """A run's key (from its configuration) and its accuracies (`accuracy_per_method` rows) against the stored
    `reference_results` table."""
    from coderflow.storage.db import query

    key = reference_key(config)
    refs = query(layout, "SELECT * FROM reference_results").to_pylist()
    return key, against_reference(accuracy_results(metrics), refs, key)


def run_against_reference(layout: Any, run_id: str) -> tuple[tuple[str, str, str | None], list[dict[str, Any]]]:
    """A stored run's key and its zero- and few-shot accuracies (mean over seeds) against the reference table."""
    import json

    from coderflow.storage.db import query, sql_file

    runs = query(layout, "SELECT config, dataset FROM runs WHERE run_id = ?", params=[run_id]).to_pylist()
    if not runs:
        raise ValueError(f"no run {run_id!r} in {layout.root}: list the runs with `coderflow runs`")
    own = {"run_id": run_id, "dataset": runs[0]["dataset"]}  # not a shifted test set's (fewshot.test_datasets)
    metrics = query(layout, sql_file("accuracy_per_method"), own).to_pylist()
    return stored_against_reference(layout, json.loads(runs[0]["config"] or "{}"), metrics)
