"""How long the command line takes to refuse a mistake: the console script started fresh, per kind of mistake.

A refusal loads no Prefect, torch, open_clip or polars (tests/test_cli.py checks that); this measures the wall time a
user waits for the one-line error, against the bare interpreter start-up (`python -c pass`). Target: every refusal
under 2 s on the 2-core machine.

    python benchmarks/cli_refusals.py              # 5 repeats per mistake
    python benchmarks/cli_refusals.py --repeats 10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Timings, print_header, result_line

CLI = str(Path(sys.executable).with_name("coderflow"))
MISTAKES = {
    "unknown method": ["run", "--methods", "clip,codr"],
    "missing source": ["run", "--source", "/nonexistent"],
    "unknown model": ["run", "--model.name", "ViT-Q"],
    "unknown weights tag": ["run", "--model.name", "ViT-B-32", "--pretrained", "laion9"],
    "unknown device": ["run", "--device", "cuda:7"],
    "missing config file": ["run", "-c", "/no/such.yaml"],
    "credentials in a URL": ["texts", "--texts.llm.base-url", "http://u:SECRET@host/v1"],
}
TARGET_S = 2.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print_header("CLI refusals", {"repeats": args.repeats})
    with tempfile.TemporaryDirectory() as tmp:
        bare = Timings("python -c pass")
        for _ in range(args.repeats):
            bare.time(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        print(f"  interpreter start: {bare.summary()}")
        for what, argv in MISTAKES.items():
            t = Timings(what)
            for _ in range(args.repeats):
                done = t.time(
                    lambda argv=argv: subprocess.run(
                        [CLI, *argv, "--workdir", f"{tmp}/w"], capture_output=True, text=True, cwd=tmp, check=False
                    )
                )
                assert done.returncode == 2, done.stdout + done.stderr
            print(f"  {what}: {t.summary()}")
            result_line(
                f"refusal: {what}", f"{t.median:.2f} s", f"{bare.median:.2f} s", f"{t.median / bare.median:.1f}x",
                f"< {TARGET_S} s", t.median < TARGET_S,
            )  # fmt: skip


if __name__ == "__main__":
    main()
