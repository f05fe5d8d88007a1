"""Outside text on output: class folder names and LLM texts holding terminal escape sequences, HTML or matplotlib
mathtext reach `coderflow query`, `coderflow report` and the Prefect Markdown artifacts as text, never as commands
to the terminal, markup to the browser or formulas to matplotlib."""

from __future__ import annotations

import base64
import json
import re

import pyarrow as pa
import pytest
from cli_runner import run_cli
from fake_openai import FakeOpenAI, completion, make_generator
from test_analysis import _config, _write_predictions, _write_run

from coderflow.console import printable
from coderflow.storage.layout import Layout
from coderflow.tasks.report.tables import confused_pairs_markdown
from coderflow.tasks.texts.llm_replies import clean_items

OSC52 = "\x1b]52;c;aGVsbG8=\x07"  # write 'hello' to the clipboard
NAMES = [
    f"cat{OSC52}",
    "<img src=x onerror=alert(1)>",
    "a$\\foo{$b",  # mathtext that does not parse
    "dog\x1b]0;pwned\x07\x1b[2J\x9b31m\u202egnp.exe",  # window title, clear screen, 8-bit CSI, right-to-left override
]
RAW = ("\x1b]", "\x1b[2J", "\x07", "\x9b", "\u202e")  # what must never reach the output as it is


def _no_raw_controls(text: str) -> None:
    for seq in RAW:
        assert seq not in text, f"{seq!r} written raw"


@pytest.fixture(scope="module")
def nasty(tmp_path_factory) -> Layout:
    """A dataset whose class folder names hold escape sequences, HTML and mathtext, and a zero-shot run on it."""
    layout = Layout.at(tmp_path_factory.mktemp("nasty") / "work")
    folder = layout.dataset_dir("pets")
    folder.mkdir(parents=True)
    (folder / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (folder / "_dataset.json").write_text(json.dumps({"name": "pets", "kind": "folder", "source": "/data"}))
    _write_run(layout, "zs", "pipeline", _config("pets", "ViT-S-32-alt", None))
    _write_predictions(layout, "zs", "pets", {"clip": 0.3, "coder": 0.4}, n=200)
    return layout


def test_printable_escapes_what_a_terminal_acts_on():
    assert printable(NAMES[0]) == "cat\\x1b]52;c;aGVsbG8=\\x07"
    assert printable("a\tb\nc\x7f\x85\u2066") == "a\tb\nc\\x7f\\x85\\u2066"
    assert printable("café 東京 🐱") == "café 東京 🐱"


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_query_shows_control_characters_escaped(nasty, fmt, terminal):
    env = {"TTY_COMPATIBLE": "1" if terminal else "0"}
    sql = "SELECT class_index, class_name FROM classes ORDER BY class_index"
    out = run_cli(["query", sql, "--workdir", str(nasty.root), "--format", fmt], env=env)
    assert out.exit_code == 0, out.output
    _no_raw_controls(out.output)
    if fmt == "json":  # JSON escapes them itself (\u001b), and reads back as the stored names
        if not terminal:
            assert [r["class_name"] for r in json.loads(out.stdout)] == NAMES
    else:
        assert "cat\\x1b]52;c;aGVsbG8=\\x07" in out.stdout and "\\x9b31m\\u202egnp.exe" in out.stdout


def test_query_error_naming_a_value_is_one_escaped_line(nasty):
    out = run_cli(["query", "SELECT CAST(class_name AS INTEGER) FROM classes", "--workdir", str(nasty.root)])
    lines = out.output.strip().splitlines()
    assert out.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.output
    _no_raw_controls(out.output)


def test_markdown_report_to_stdout_is_text(nasty):
    """`report -o -`: class names escaped as in the HTML report, control characters shown escaped, and the plot
    labels drawn as plain text (mathtext that does not parse used to fail the report)."""
    out = run_cli(["report", "zs", "--workdir", str(nasty.root), "-o", "-", "--resamples", "50"])
    assert out.exit_code == 0, out.output
    _no_raw_controls(out.output)
    assert "<img" not in out.stdout and "&lt;img src=x onerror=alert(1)&gt;" in out.stdout
    assert "a\\$\\\\foo{\\$b" in out.stdout  # `$` and `\` escaped: no math, no escape
    figures = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", out.stdout)
    svgs = [base64.b64decode(f).decode() for f in figures]
    labels = "".join(svgs)
    assert len(svgs) == 3 and "a$\\foo{$b" in labels and "cat\\x1b]52;c;aGVsbG8=\\x07" in labels
    assert "<img" not in labels and not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", labels)


def test_html_report_of_nasty_class_names(nasty, tmp_path):
    out = run_cli(["report", "zs", "--workdir", str(nasty.root), "--format", "html", "-o", tmp_path / "r.html"])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "r.html").read_text()
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    _no_raw_controls(page)


def test_markdown_artifacts_escape_class_names_and_texts():
    from coderflow.tasks.texts.task import summary_markdown

    rows = [{"method": "coder", "true_class": NAMES[1], "predicted_class": NAMES[3], "n": 3}]
    confused = confused_pairs_markdown(rows, "r1")
    summary = {
        "types": {"att": {"kept": 1, "classes": 1, "dropped": {}, "requests": 1, "requested": 3, "received": 1,
                          "tokens": 9}},
        "classes_without": {"ana": [NAMES[1], NAMES[0]]},
    }  # fmt: skip
    bank = pa.table({"text_type": ["att"], "text": [f"{NAMES[1]} which has [a link](javascript:alert(1))"]})
    text = summary_markdown("b1", bank, summary)
    for markdown in (confused, text):
        assert "<img" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
        _no_raw_controls(markdown)
    assert "\\[a link\\](javascript:alert(1))" in text  # no link


def test_the_llm_filter_drops_phrases_with_control_characters(tmp_path):
    dropped: dict[str, int] = {}
    items = ["red \x1b[31mfeathers", "a \u202eevil", f"long {OSC52} beak", "short\x9b2J tail", "webbed feet"]
    assert clean_items(items, 9, "duck", dropped) == ["webbed feet"]
    assert dropped == {"control characters": 4}
    with FakeOpenAI() as server:
        server.push(completion(json.dumps({"attributes": items})))
        gen = make_generator(server, tmp_path)
        assert gen.attributes(["duck"], 5) == [["webbed feet"]]
    assert gen.report()["dropped"]["att"] == {"control characters": 4}
