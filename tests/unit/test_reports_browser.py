"""Every HTML report kind, opened from a saved file in headless Chromium (Debian's ``chromium``, driven
over the DevTools protocol by tests/cdp.py): no console error or exception, no network request (it
works offline), every chart SVG laid out with a non-zero size, and a screenshot.

Screenshots go to the test's tmp dir; with ``CVOPS_SAVE_SCREENSHOTS=1`` also to docs/img/ (the ones
docs/api.md shows).  Without Chromium the test is skipped locally and FAILS in CI (``.ci/run`` installs
it), so it never silently stops running there.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from cvops.reports import job_report, model_card_report
from tests import report_events as ev
from tests.cdp import chromium, find_chromium

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "benchmark": lambda view: job_report("bench1", ev.benchmark_events(), view, "html"),
    "training": lambda view: job_report("train1", ev.training_events(), view, "html"),
    "evolution": lambda view: job_report("evo1", ev.evolution_events(objectives=True), view, "html"),
    "model-card": lambda view: model_card_report("m2", ev.card_events(), view, "html"),
}
# charts per page: simple views have exactly one; technical ones all of theirs
CHARTS = {
    ("benchmark", "simple"): 1,
    ("benchmark", "technical"): 2,
    ("training", "simple"): 1,
    ("training", "technical"): 3,
    ("evolution", "simple"): 1,
    ("evolution", "technical"): 2,
    ("model-card", "simple"): 1,
    ("model-card", "technical"): 1,
}

if not find_chromium():
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing in CI (.ci/run installs it with apt-get)", pytrace=False)
    pytest.skip("chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # type: ignore[return-value]


async def test_every_html_report_renders_in_chromium(tmp_path: Path) -> None:
    save = os.environ.get("CVOPS_SAVE_SCREENSHOTS") == "1"
    async with chromium(tmp_path / "profile") as page:
        for (kind, view), charts in CHARTS.items():
            html_file = tmp_path / f"report-{kind}-{view}.html"
            html_file.write_bytes(PAGES[kind](view))
            page.events.clear()
            await page.open(html_file.as_uri())
            sizes = await page.evaluate(
                "JSON.stringify([...document.querySelectorAll('svg')].map(s => {"
                "const r = s.getBoundingClientRect(); return [s.getAttribute('class'), r.width, r.height];}))"
            )
            boxes = json.loads(sizes)
            assert len(boxes) == charts, (kind, view, boxes)
            for cls, width, height in boxes:
                assert cls == "chart" and width > 100 and height > 50, (kind, view, boxes)
            title = await page.evaluate("document.querySelector('h1').textContent")
            assert title and title.split(" ")[0] in ("Benchmark", "Training", "Evolution", "Model"), title
            shot = tmp_path / f"report-{kind}-{view}.png"
            width, height = await page.screenshot(shot, max_height=1400 if view == "simple" else 2600)
            assert _png_size(shot.read_bytes()) == (width, height) and shot.stat().st_size > 5000
            assert page.errors() == [], (kind, view, page.errors())
            assert [u for u in page.requests() if not u.startswith(("file:", "data:"))] == [], (kind, view)
            if save:
                (ROOT / "docs" / "img" / shot.name).write_bytes(shot.read_bytes())


async def test_a_broken_page_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: a script error, a fetch and a zero-size chart are all seen."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><svg class="chart" width="0" height="0"></svg>'
        "<script>console.error('boom'); undefinedFunction();</script>"
        '<img src="http://127.0.0.1:9/x.png"></body></html>'
    )
    async with chromium(tmp_path / "profile") as page:
        await page.open(bad.as_uri())
        errors = page.errors()
        assert any("console.error" in e for e in errors) and any("exception" in e for e in errors), errors
        assert "http://127.0.0.1:9/x.png" in page.requests()
        rect = await page.evaluate("JSON.stringify(document.querySelector('svg').getBoundingClientRect())")
        assert '"width":0' in rect
