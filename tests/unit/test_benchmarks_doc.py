"""BENCHMARKS.md is exactly what `python -m bench.render` writes from bench/results/."""

from __future__ import annotations

import difflib
import importlib
import json
import re
import shutil

import pytest

from bench import render

DOCUMENT = render.DOCUMENT


def test_benchmarks_md_is_what_bench_render_writes(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    assert render.main(["--out", str(out)]) == 0
    want, got = out.read_text(), DOCUMENT.read_text()
    diff = "".join(
        list(
            difflib.unified_diff(
                got.splitlines(True), want.splitlines(True), "BENCHMARKS.md", "rendered"
            )
        )[:40]
    )
    assert out.read_bytes() == DOCUMENT.read_bytes(), (
        "BENCHMARKS.md is not what the results files say: run `python -m bench.render` and "
        f"commit BENCHMARKS.md\n{diff}"
    )


def test_every_section_is_rendered_with_the_command_that_wrote_its_file():
    text = render.render()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == [section.heading for section in render.SECTIONS]
    assert any(heading.startswith("Web page under load") for heading in headings)
    for heading, body in zip(
        headings, re.split(r"^## .+$", text, flags=re.MULTILINE)[1:], strict=True
    ):
        tables = body.count("\n|---")
        cited = re.findall(
            r"`\.venv/bin/python -m bench\.\w+[^`]*` \(writes\s+`bench/results/"
            r"[\w.-]+\.json`",
            body,
        )
        assert tables >= 1 and cited, heading


def test_a_figure_in_a_results_file_is_the_figure_in_the_document(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results)
    train = json.loads((results / "train.json").read_text())
    web = json.loads((results / "load_web-224px.json").read_text())
    assert f"{train['speedup_wall']}x" in render.render()
    train["speedup_wall"] = 77.7
    web["servers"]["batched"]["32"]["p99_ms"] = 1234.5
    (results / "train.json").write_text(json.dumps(train))
    (results / "load_web-224px.json").write_text(json.dumps(web))
    text = render.render(results)
    assert "| 77.7x |" in text and "| 77.7x |" not in DOCUMENT.read_text()
    web_section = text.split("## Web page under load")[1]
    assert web_section.count("1234.5") == 2  # the table and the prose under it


def test_a_missing_results_file_names_itself_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"featurize\.json is missing.*bench\.render"):
        render.render(tmp_path)


def test_every_results_file_named_in_benchmarks_md_exists():
    named = set(re.findall(r"bench/results/[\w.-]+\.(?:json|md)", DOCUMENT.read_text()))
    assert named, "BENCHMARKS.md names no results file"
    assert {name for name in named if not (render.ROOT / name).is_file()} == set()


def test_make_bench_runs_exactly_the_commands_benchmarks_md_shows():
    from bench.run_all import BENCHMARKS, command

    text = " ".join(render.render().split())  # commands may be wrapped over lines
    shown = re.findall(r"`(\.venv/bin/python -m bench\.(?!render)[^`]*)`", text)
    assert sorted(command(name, args) for name, args in BENCHMARKS) == sorted(set(shown))


# Tables a bench wrote without a `to_markdown` to render them again (BENCHMARKS.md quotes their
# JSON by hand), and one written by the fuzz campaign outside bench/.
TABLES_NOT_RENDERED = {
    "fine_tune-last-12-layers",
    "fine_tune-last-block",
    "fuzz",
    "int8-accuracy",
    "int8-speed",
    "search",
}


def _tables_with_a_renderer() -> list[tuple[str, object]]:
    """Each results file whose run also wrote a markdown table, with its module's to_markdown."""
    found = []
    for saved in sorted(render.RESULTS.glob("*.json")):
        if not saved.with_suffix(".md").exists() or saved.stem in TABLES_NOT_RENDERED:
            continue
        module = importlib.import_module(f"bench.{saved.stem.split('-')[0]}")
        found.append((saved.stem, module.to_markdown))
    return found


def test_a_table_reads_the_same_from_the_saved_json_as_the_run_wrote_it():
    # The saved JSON sorts its keys; BENCHMARKS.md is rendered from it, the .md beside it by the
    # run, from the figures in the order it measured them: both must list rows alike.
    tables = _tables_with_a_renderer()
    written = {path.stem for path in render.RESULTS.glob("*.md")}
    assert {stem for stem, _ in tables} == written - TABLES_NOT_RENDERED
    assert TABLES_NOT_RENDERED <= written  # a file renamed or gone: update the set
    for stem, to_markdown in tables:
        saved = json.loads((render.RESULTS / f"{stem}.json").read_text())
        table = (render.RESULTS / f"{stem}.md").read_text()
        assert to_markdown(saved).strip() == table.strip(), stem
