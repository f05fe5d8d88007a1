"""`coderflow suite -c FILE` (a grid of pipeline and few-shot runs) and `coderflow suites` (the suite runs stored)."""

from __future__ import annotations

import json
import time

from cyclopts import App

from coderflow.cli.app import COMMON, Options, TableFormat, Workdir, app, command, console
from coderflow.cli.read_commands import suite_report_cmd
from coderflow.console import print_rows
from coderflow.storage.db import query
from coderflow.storage.layout import Layout
from coderflow.suite_config import expand, read_suite

SUITES_SQL = """
SELECT suite_id, any_value(suite_name) AS name, min(started_at) AS started, max(finished_at) AS finished,
       count(*) FILTER (WHERE status IN ('completed', 'reused')) AS done,
       count(*) FILTER (WHERE status = 'reused') AS reused,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM suite_cells GROUP BY suite_id ORDER BY started DESC
"""


# `coderflow suite -c FILE` runs a suite; `coderflow suite report ID` reports on a stored one (read_commands)
suite_app = App(name="suite", help="Run a suite file (-c), or `coderflow suite report ID` on a stored suite run.")
app.command(suite_app)
suite_app.command(suite_report_cmd, name="report")


@command("suite", parent=suite_app, default=True)
def suite(*, options: Options = None) -> int:
    """Run a suite file (-c): datasets x models x text banks x methods, and few-shot; up-to-date cells answer from
    their stored runs, a failing cell is recorded and the others go on. Exit code 1 when a cell failed."""
    if COMMON.config is None:
        raise ValueError("coderflow suite needs a suite file: coderflow suite -c suite.yaml (see docs/suites.md)")
    flags = options.model_dump(exclude_none=True) if options is not None else {}
    file = read_suite(COMMON.config, flags)
    cells = expand(file)
    from coderflow.flows.suite_inputs import check_cells

    check_cells(cells)  # the checks of `coderflow run`, before any work
    from coderflow.flows.suite import suite as suite_flow

    start = time.perf_counter()
    result = suite_flow(file)
    columns = ("dataset", "model", "bank", "kind", "axis", "status", "run_id", "seconds", "error")
    print_rows([{k: c[k] for k in columns} for c in result.cells], title=f"suite {result.suite_id}", columns=columns)
    done, reused, failed = result.count("completed", "reused"), result.count("reused"), result.count("failed")
    console.print(
        f"suite {result.suite_id}: {done} of {len(result.cells)} cells done ({reused} from stored runs), "
        f"{failed} failed, in {time.perf_counter() - start:.1f} s; results in {Layout.at(file.settings.get('workdir')).root}",
        highlight=False,
        soft_wrap=True,
    )
    return 1 if failed else 0


@app.command(name="suites")
def suites(*, workdir: Workdir = None, fmt: TableFormat = "table") -> None:
    """One line per suite run: its id, name, start, and its cells done / failed / total (from `suite_cells`)."""
    layout = Layout.at(workdir)
    rows = query(layout, SUITES_SQL).to_pylist()
    for r in rows:
        plan = layout.suite_file(r["suite_id"], "plan.json")
        r["total"] = len(json.loads(plan.read_text())["cells"]) if plan.is_file() else None
    columns = ("suite_id", "name", "started", "finished", "done", "reused", "failed", "total")
    if fmt == "json":
        console.print_json(json.dumps(rows, default=str), ensure_ascii=True)
    else:
        print_rows(rows, title=f"{len(rows)} suite runs", columns=columns)
