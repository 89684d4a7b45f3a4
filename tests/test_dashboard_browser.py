"""The dashboard in Debian's Chromium, on the served demo: a CSM's and a viewer's day, every
page screenshotted (test-results/screenshots/) and checked with axe for serious or critical
findings (test-results/axe/)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import sqlalchemy as sa
from playwright.sync_api import Page, expect

from tests.browser import (
    DashboardUser,
    ServedDemo,
    assert_accessible,
    log_in,
    run_firstvalue,
    save_screenshot,
    sqlite_url,
)


def checked(page: Page, name: str) -> None:
    save_screenshot(page, name)
    assert_accessible(page, name)


def demo_rows(served: ServedDemo, sql: str, **params) -> list:
    engine = sa.create_engine(sqlite_url(served.db))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()
    finally:
        engine.dispose()


def test_a_csm_works_through_the_dashboard(page: Page, served_demo: ServedDemo,
                                           dashboard_users: dict[str, DashboardUser]):
    csm = dashboard_users["csm"]
    log_in(page, served_demo, csm)
    expect(page).to_have_url(re.compile(r"/portfolio$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Portfolio")
    checked(page, "portfolio")

    # Filter the portfolio to one owner: every row left is that owner's.
    page.get_by_label("Owner").select_option(csm.name)
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"owner=ana"))
    owners = page.locator("table.portfolio tbody tr td:nth-child(4)").all_inner_texts()
    assert owners and set(owners) == {csm.name}
    checked(page, "portfolio-one-owner")

    # Open an account and read the reason for one of its actions.
    page.locator("table.portfolio tbody tr th a").first.click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    reasons = page.locator(".timeline .entry.action .reason")
    expect(reasons.first).to_contain_text("Why: rule ")
    checked(page, "account")

    # Complete a task from the work queue: it leaves the queue.
    page.get_by_role("link", name="My work").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("My work: ana")
    done_buttons = page.get_by_role("button", name=re.compile(r"^Done"))
    before = done_buttons.count()
    assert before > 0, "the demo's CSM has no open task to complete"
    checked(page, "work")
    done_buttons.first.click()
    expect(page.get_by_role("status").first).to_have_text("The task is marked done.")
    assert page.get_by_role("button", name=re.compile(r"^Done")).count() == before - 1

    # Submit a handoff with a required field missing: the error is beside that field.
    [(account,)] = demo_rows(served_demo, "SELECT id FROM accounts WHERE traits LIKE "
                             "'%mid_market%' ORDER BY id LIMIT 1")
    stored = demo_rows(served_demo, "SELECT * FROM handoffs WHERE account_id = :a", a=account)
    page.goto(served_demo.url(f"/handoff/{account}"))
    page.get_by_label("Use case (required)").fill("lead_enrichment")
    page.get_by_label("Stakeholders (required)").fill("Dana Reyes (champion) <dana@example.com>")
    page.get_by_label("Technical requirements (required)").fill("crm: salesforce")
    page.get_by_label("Commitments (required)").fill("weekly check-ins")
    page.get_by_label("Success criteria (required)").fill("")
    checked(page, "handoff-form")
    page.get_by_role("button", name="Submit the handoff").click()
    field = page.get_by_label("Success criteria (required)")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#error-success_criteria")).to_contain_text("required")
    expect(page.get_by_label("Use case (required)")).to_have_value("lead_enrichment")
    assert page.locator(".field-error").count() == 1
    checked(page, "handoff-missing-field")
    assert demo_rows(served_demo, "SELECT * FROM handoffs WHERE account_id = :a",
                     a=account) == stored  # nothing was stored

    # The funnel page draws its charts.
    page.get_by_role("link", name="Funnel and TTV").click()
    charts = page.locator(".chart[data-drawn='true']")
    expect(charts).to_have_count(3, timeout=30_000)
    assert page.locator(".chart svg").count() == 3
    assert page.locator("#chart-ttv svg path").count() > 0  # the curves are drawn
    checked(page, "funnel")

    for link, name in (("Playbook", "playbook"), ("Deliveries", "deliveries")):
        page.get_by_role("link", name=link, exact=True).click()
        expect(page.get_by_role("heading", level=1)).to_have_text(link)
        checked(page, name)


def test_a_viewer_is_refused_in_the_browser(page: Page, served_demo: ServedDemo,
                                            dashboard_users: dict[str, DashboardUser]):
    log_in(page, served_demo, dashboard_users["viewer"])
    page.goto(served_demo.url("/work?owner="))
    expect(page.get_by_role("heading", level=1)).to_have_text("My work")
    assert page.get_by_role("button", name=re.compile(r"^(Done|Snooze)")).count() == 0
    [(account,)] = demo_rows(served_demo, "SELECT id FROM accounts ORDER BY id LIMIT 1")
    page.goto(served_demo.url(f"/handoff/{account}"))
    expect(page.get_by_text("You are logged in as a viewer")).to_be_visible()
    assert page.get_by_role("button", name="Submit the handoff").count() == 0
    checked(page, "handoff-viewer")

    # The form posted anyway, with this session's own CSRF token, is refused: the page the
    # browser is sent to says why.
    page.evaluate("""(account) => {
        const form = document.createElement('form');
        form.method = 'post';
        form.action = '/handoff/' + encodeURIComponent(account);
        for (const [name, value] of [['csrf_token',
                document.querySelector('input[name=csrf_token]').value],
                ['field_use_case', 'lead_enrichment'], ['intent', 'save_incomplete']]) {
            const input = document.createElement('input');
            input.type = 'hidden'; input.name = name; input.value = value;
            form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
    }""", account)
    expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(page.get_by_role("alert")).to_contain_text("viewer")
    checked(page, "viewer-refused")
    assert demo_rows(served_demo, "SELECT 1 FROM handoffs WHERE account_id = :a "
                     "AND submitted_by LIKE 'dashboard:viewer%'", a=account) == []

    # A form posted from the page without its CSRF token is refused too.
    [(key,)] = demo_rows(served_demo, "SELECT key FROM actions WHERE kind = 'task' AND "
                         "status = 'sent' AND done_at IS NULL ORDER BY key LIMIT 1")
    status = page.evaluate("""async (key) => (await fetch('/tasks/done', {method: 'POST',
        headers: {'Content-Type': 'application/x-www-form-urlencoded'},
        body: 'key=' + encodeURIComponent(key)})).status""", key)
    assert status == 403


def test_the_login_page_and_an_html_name_show_as_text(page: Page, served_demo: ServedDemo,
                                                      dashboard_users: dict[str, DashboardUser],
                                                      tmp_path):
    page.goto(served_demo.url("/login"))
    checked(page, "login")
    [(account,)] = demo_rows(served_demo, "SELECT id FROM accounts ORDER BY id LIMIT 1")
    name = "<img src=x onerror=\"document.title='owned'\"> & Co"
    events = tmp_path / "rename.jsonl"
    events.write_text(json.dumps({
        "type": "group", "messageId": "html-name", "userId": f"{account}-admin",
        "groupId": account, "traits": {"name": name},
        "timestamp": datetime.now(UTC).isoformat()}) + "\n")
    run_firstvalue(["--db", sqlite_url(served_demo.db), "import", str(events)])
    log_in(page, served_demo, dashboard_users["admin"])
    page.goto(served_demo.url(f"/accounts/{account}"))
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    assert page.locator("main img").count() == 0
    assert page.title() != "owned"


def test_a_page_reloads_itself_when_new_events_change_it(page: Page, served_demo: ServedDemo,
                                                         dashboard_users: dict[str,
                                                                           DashboardUser],
                                                         tmp_path):
    [(account,)] = demo_rows(served_demo, "SELECT id FROM accounts ORDER BY id DESC LIMIT 1")
    log_in(page, served_demo, dashboard_users["viewer"])
    page.goto(served_demo.url(f"/accounts/{account}"))
    stamp = page.locator("body").get_attribute("data-stamp")
    assert page.get_by_text("Browser Refresh Check").count() == 0

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({
        "type": "track", "messageId": "browser-refresh-check", "userId": f"{account}-watcher",
        "event": "Browser Refresh Check", "context": {"groupId": account},
        "timestamp": datetime.now(UTC).isoformat()}) + "\n")
    db = ["--db", sqlite_url(served_demo.db)]
    run_firstvalue([*db, "import", str(events)])
    run_firstvalue([*db, "tick"])

    # The page notices within its refresh interval (1 s here) and reloads with the event.
    expect(page.get_by_text("Browser Refresh Check").first).to_be_visible(timeout=15_000)
    assert page.locator("body").get_attribute("data-stamp") != stamp
