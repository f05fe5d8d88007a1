"""Flow run names and tags that say what a run works on (dataset, model, methods, shots), for the Prefect UI."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefect.context import FlowRunContext


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """A field of a pydantic model or of its JSON form (deployment runs may hold either)."""
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _parts(params: Mapping[str, Any]) -> dict[str, Any]:
    """dataset, split, model, methods, shots and adapter named by a flow's parameters (`config` flows: inside it)."""
    source = params.get("config") if params.get("config") is not None and "dataset" not in params else params
    dataset, model = _get(source, "dataset"), _get(source, "model")
    return {
        "dataset": _get(dataset, "name", "demo"),
        "split": _get(dataset, "split", "test"),
        "model": _get(model, "name"),
        "pretrained": _get(model, "pretrained"),
        "adapter": _get(model, "adapter"),
        "methods": _get(source, "methods"),
        "shots": _get(_get(source, "fewshot"), "shots"),
        "train_split": _get(_get(source, "adapter"), "train_split", "train"),
    }


def describe_run(
    params: Mapping[str, Any], with_model: bool = True, with_methods: bool = False, what: str | None = None
) -> str:
    """'demo/test ViT-S-32-alt [clip,coder]' from a flow's parameters. `what` (few-shot, train-adapter,
    adapter-overlap) leads the name and picks what it says: 'few-shot demo ViT-S-32-alt 1,2,4-shot' (few-shot reads
    three splits), 'train-adapter demo/train ViT-S-32-alt', 'adapter-overlap demo/test ViT-S-32-alt+adapter-0123...'."""
    p = _parts(params)
    if what == "few-shot":
        name = p["dataset"]
    else:
        name = f"{p['dataset']}/{p['train_split'] if what == 'train-adapter' else p['split']}"
    if with_model and p["model"]:
        name += f" {p['model']}" + (f":{p['pretrained']}" if p["pretrained"] else "")
        if p["adapter"] and what != "train-adapter":  # training starts from the original encoder
            name += f"+{p['adapter']}"
    if with_methods and p["methods"]:
        name += f" [{','.join(p['methods'])}]"
    if what == "few-shot" and p["shots"]:
        name += f" {','.join(str(k) for k in p['shots'])}-shot"
    return f"{what} {name}" if what else name


def run_tags(params: Mapping[str, Any]) -> list[str]:
    """Tags for filtering runs in the UI: dataset:<name>, model:<architecture>, adapter:<id> (adapted features)."""
    p = _parts(params)
    tags = [f"dataset:{p['dataset']}"]
    if p["model"]:
        tags.append(f"model:{p['model']}")
    if p["adapter"]:
        tags.append(f"adapter:{p['adapter']}")
    return tags


def run_namer(with_model: bool = True, with_methods: bool = False, what: str | None = None) -> Callable[[], str]:
    """A `flow_run_name` callable: names the run from the parameters it was started with (see `describe_run`)."""

    def name() -> str:
        ctx = FlowRunContext.get()
        return describe_run(ctx.parameters if ctx else {}, with_model, with_methods, what)

    return name


RUN_TAG_PREFIXES = ("dataset:", "model:", "adapter:")  # the tags `run_tags` derives from a run's configuration


def tag_flow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """An `on_running` hook: tags the run with the dataset, model and adapter of the configuration it runs with;
    such tags it got elsewhere (a deployment's, naming its default parameters) are replaced, other tags kept."""
    from prefect.client.orchestration import get_client

    ctx = FlowRunContext.get()
    params = ctx.parameters if ctx and ctx.parameters else (flow_run.parameters or {})
    kept = [t for t in flow_run.tags or [] if not t.startswith(RUN_TAG_PREFIXES)]
    tags = sorted({*kept, *run_tags(params)})
    if tags != sorted(flow_run.tags or []):
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=tags)
        flow_run.tags = tags


def ui_link(flow_run_id: str | None) -> str | None:
    """The Prefect UI page of a flow run, when a UI is configured (PREFECT_UI_URL)."""
    if not flow_run_id:
        return None
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None
