"""The browser harness itself: Chromium launches, screenshots are written, axe catches what it
should, and the Vega-Lite bundle draws a chart in Debian's Chromium.

These check the tools the dashboard's tests stand on, so that a dashboard test failing means the
dashboard is wrong, not the harness.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.sync_api import Page, Route

from tests.browser import AXE_RESULTS, ServedDemo, assert_accessible, save_screenshot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Loopback, on the discard port: if the route below ever failed to answer, the request would be
# refused here rather than leave the machine.
BUNDLE_URL = "http://127.0.0.1:9/vega-bundle.js"

DOT = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/x8AAw"
       "MCAO+ip1sAAAAASUVORK5CYII=")

INACCESSIBLE = f"""<!doctype html>
<html lang="en"><head><title>Broken</title></head>
<body><main><h1>Broken</h1>
<img src="{DOT}">
<form><input type="text" name="q"></form>
</main></body></html>"""

ACCESSIBLE = f"""<!doctype html>
<html lang="en"><head><title>Fine</title></head>
<body><main><h1>Fine</h1>
<img src="{DOT}" alt="A dot">
<form><label for="q">Search</label> <input type="text" id="q" name="q"></form>
</main></body></html>"""

BAR_CHART = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {"values": [{"phase": "kickoff", "days": 4}, {"phase": "setup", "days": 9}]},
    "mark": "bar",
    "encoding": {"x": {"field": "phase", "type": "nominal"},
                 "y": {"field": "days", "type": "quantitative"}},
}


def test_chromium_renders_the_served_demos_health_page(page: Page, served_demo: ServedDemo):
    response = page.goto(served_demo.url("/health"))

    assert response is not None and response.status == 200
    assert json.loads(page.locator("body").inner_text()) == {"status": "ok"}
    assert served_demo.db.stat().st_size > 0


def test_a_screenshot_is_a_full_page_png_under_test_results(page: Page):
    page.set_content("<!doctype html><title>Tall</title><h1>Screenshot</h1>"
                     "<div style='height: 2000px'></div>")

    path = save_screenshot(page, "harness-screenshot")

    data = path.read_bytes()
    assert path.parent.name == "screenshots" and path.parent.parent.name == "test-results"
    assert data.startswith(PNG_SIGNATURE)
    height = int.from_bytes(data[20:24], "big")  # the IHDR chunk: width, then height
    assert height > 2000


# Right after a browser test in file order, on the same worker when run without -n.
def test_a_test_after_a_browser_test_can_run_an_event_loop():
    async def answer() -> int:
        return 42

    assert asyncio.run(answer()) == 42


def test_axe_failure_names_the_missing_alt_text_and_the_unlabelled_input(page: Page):
    page.set_content(INACCESSIBLE)

    with pytest.raises(pytest.fail.Exception) as failure:
        assert_accessible(page, "harness-inaccessible")

    message = str(failure.value)
    assert "image-alt (critical): Images must have alternative text" in message
    assert "label (critical): Form elements must have labels" in message
    assert "at img\n" in message and message.endswith("at input")
    written = json.loads((AXE_RESULTS / "harness-inaccessible.json").read_text())
    assert {"image-alt", "label"} <= {v["id"] for v in written["violations"]}


def test_axe_failure_shows_the_first_three_targets_of_a_rule_and_counts_the_rest(page: Page):
    page.set_content('<!doctype html><html lang="en"><title>Dots</title><main>'
                     + "".join(f'<p><img id="dot{n}" src="{DOT}"></p>' for n in range(5))
                     + "</main></html>")

    with pytest.raises(pytest.fail.Exception) as failure:
        assert_accessible(page, "harness-five-images")

    assert "at #dot0, #dot1, #dot2 and 2 more" in str(failure.value)


def test_axe_passes_a_page_with_alt_text_and_labels(page: Page):
    page.set_content(ACCESSIBLE)

    results = assert_accessible(page, "harness-accessible")

    assert not [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
    assert (AXE_RESULTS / "harness-accessible.json").exists()


def test_the_vega_lite_bundle_draws_a_bar_chart_in_chromium(page: Page, vega_bundle: str):
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def serve_bundle(route: Route) -> None:
        route.fulfill(status=200, content_type="text/javascript", body=vega_bundle)

    page.route(BUNDLE_URL, serve_bundle)
    page.set_content(f"""<!doctype html><html lang="en"><head><title>Chart</title>
<script src="{BUNDLE_URL}"></script></head>
<body><div id="c"></div>
<script>vegaEmbed('#c', {json.dumps(BAR_CHART)}, {{renderer: 'svg', actions: false}})
  .then(() => document.body.dataset.drawn = 'yes')
  .catch(error => document.body.dataset.drawn = 'error: ' + error);</script>
</body></html>""")

    page.wait_for_function("document.body.dataset.drawn !== undefined", timeout=15_000)
    assert page.evaluate("document.body.dataset.drawn") == "yes", errors
    assert page.locator("#c svg").count() == 1
    assert page.locator("#c svg .mark-rect path").count() == 2
    assert errors == []
