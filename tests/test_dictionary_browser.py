"""The dictionary in a real browser: Debian's headless Chromium driven by Playwright.

Never downloads a browser (no `playwright install`): `make test` installs Debian's
`chromium`. Checks, on the served pages and on a static build opened from file://: the
search box filters metrics, a metric page shows its chart (inline SVG) and SQL, the copy
button copies, nothing is fetched from the network, and hostile text never runs.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations


import pytest

from conftest import DATASET, ROOT
from dictionary_site import cli, site  # noqa: F401 (site: fixture)

pytestmark = pytest.mark.e2e
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 1000},
                                  permissions=["clipboard-read", "clipboard-write"])
    pg = context.new_page()
    pg.requests, pg.dialogs, pg.errors = [], [], []
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def search_and_open_metric(pg, shot: str) -> None:
    """From the apps list: open the app, search, open toolbox.launch_count; check chart and SQL."""
    pg.get_by_role("link", name="org.example.toolbox").click()
    pg.wait_for_selector("#metric-search")
    rows = pg.locator("#metrics tbody tr")
    total = rows.count()
    assert total >= 30
    pg.locator("#metric-search").press_sequentially("launched")  # matches a description, not the id
    visible = pg.locator("#metrics tbody tr:not([hidden]) td:first-child").all_inner_texts()
    assert visible == ["toolbox.launch_count"]
    assert pg.locator("#metric-count").inner_text() == f"1 of {total} metrics"
    pg.locator("#metric-search").fill("labeled_counter tool")  # every word must match
    visible = pg.locator("#metrics tbody tr:not([hidden]) td:first-child").all_inner_texts()
    assert "toolbox.tool_used" in visible and "toolbox.launch_count" not in visible
    pg.locator("#metric-search").fill("launch")
    pg.get_by_role("link", name="toolbox.launch_count").click()
    pg.wait_for_url("**/metrics/toolbox.launch_count.html")
    pg.wait_for_selector("pre.sql-duckdb")
    assert pg.locator("h1").inner_text() == "toolbox.launch_count"
    chart = pg.locator("svg.chart").first
    assert chart.is_visible() and chart.locator("circle.point").count() >= 1
    tip = chart.locator("circle.point title").first.text_content()
    assert tip.startswith("sum ") and tip.endswith(": 6"), tip  # the SDK sent launch_count 6
    duck = pg.locator("pre.sql-duckdb").first
    assert duck.is_visible() and "SUM(p.metrics.counter.toolbox_launch_count)" in duck.inner_text()
    assert "`org_example_toolbox." in pg.locator("pre.sql-bigquery").first.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / shot), full_page=True)


def test_served_dictionary_in_chromium(site, page):
    page.goto(f"{site.url}/dictionary/")
    assert page.locator("#apps tbody tr").count() == 2
    search_and_open_metric(page, "dictionary-metric-served.png")
    button = page.locator("button.copy").first
    button.click()
    from playwright.sync_api import expect

    expect(button).to_have_attribute("data-copied", "1")  # (wait_for_function would need eval: the CSP forbids it)
    sql = page.locator("pre.sql-duckdb").first.text_content()
    assert page.evaluate("navigator.clipboard.readText()") == sql
    # Hostile description, labels and event names are shown as text and never run.
    page.goto(f"{site.url}/dictionary/apps/org_example_xss/metrics/evil.payload.html")
    assert "<script>window.__xss=1</script>" in page.locator("#metric-description").inner_text()
    page.goto(f"{site.url}/dictionary/apps/{DATASET}/index.html")
    page.goto(f"{site.url}/dictionary/apps/{DATASET}/metrics/toolbox_hostile.html")
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.dialogs == [] and page.errors == []
    # no network: every request went to the dictionary itself (a favicon lookup would be the same host)
    assert all(u.startswith(site.url + "/") for u in page.requests), page.requests


def test_static_build_from_file_url_in_chromium(site, page, tmp_path):
    out = tmp_path / "static"
    assert cli(site.data_dir, "dictionary", "build", "--out", str(out)).returncode == 0
    page.goto((out / "index.html").as_uri())
    search_and_open_metric(page, "dictionary-metric-static.png")
    assert page.url == (out / "apps" / DATASET / "metrics" / "toolbox.launch_count.html").as_uri()
    assert all(u.startswith("file://") for u in page.requests), page.requests
    assert page.errors == []
