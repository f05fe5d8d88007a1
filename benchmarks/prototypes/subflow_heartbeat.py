"""What a sub-flow costs: a parent flow calling no-op sub-flows, with and without their own heartbeats.

`own heartbeats`: Prefect's default, every sub-flow run starts a heartbeat thread and joins it at exit (the thread
sleeps in 1 s steps, so the join waits up to 1 s). `share the parent's`: the parent's function is decorated with
flows.runners.subflows_share_heartbeat, as pipeline, few-shot, train-adapter and adapter-overlap are. Runs in a
temporary PREFECT_HOME (the ephemeral server starts first, not timed).

    python benchmarks/prototypes/subflow_heartbeat.py [--subflows 5 --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Timings, print_header, result_line

import coderflow  # noqa: F401  (offline Prefect settings, before prefect is imported)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subflows", type=int, default=5, help="no-op sub-flows per parent run")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="bench-heartbeat-")  # read when prefect is imported
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect import flow

    from coderflow.flows.runners import subflows_share_heartbeat

    print_header("subflow_heartbeat", {"subflows": args.subflows, "repeats": args.repeats}, ("prefect",))

    @flow(name="bench-child")
    def child() -> int:
        return 1

    @flow(name="bench-parent-own")
    def own() -> int:
        return sum(child() for _ in range(args.subflows))

    @flow(name="bench-parent-shared")
    @subflows_share_heartbeat
    def shared() -> int:
        return sum(child() for _ in range(args.subflows))

    child()  # starts the ephemeral server
    sides = [(Timings("own heartbeats"), own), (Timings("share the parent's"), shared)]
    for i in range(args.repeats):
        for t, fn in sides[i % 2 :] + sides[: i % 2]:
            assert t.time(fn) == args.subflows
    for t, _ in sides:
        print(f"  parent + {args.subflows} sub-flows, {t.name}: {t.summary()}")
    (a, _), (b, _) = sides
    per_subflow = (a.median - b.median) / args.subflows
    result_line(
        f"parent + {args.subflows} no-op sub-flows",
        f"{b.median:.2f} s",
        f"{a.median:.2f} s",
        f"{per_subflow:.2f} s saved per sub-flow",
        "-",
        None,
    )


if __name__ == "__main__":
    main()
