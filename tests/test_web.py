"""The dashboard over HTTP: logins and roles, CSRF, the pages and what their forms change."""

from __future__ import annotations

import re
import shutil
import threading

import pytest
import sqlalchemy as sa

from firstvalue.access import create_api_token, hash_secret
from firstvalue.api.app import create_app
from firstvalue.runtime.evaluation import tick
from firstvalue.store.database import open_database
from tests.conftest import micros
from tests.test_sequences import onboarding, simulate, track
from tests.test_timing_rules import SANDBOX
from tests.web_helpers import PASSWORDS, TestClient, add_users, csrf_of, log_in

NOW = micros("2026-03-13T12:00:00+01:00")  # day 11: the day-10 session task is open
TASK = "acme/acme-deal/template_recommendation.session/1"


@pytest.fixture(scope="module")
def built(tmp_path_factory, playbook):
    """One simulated store for the module: acme (an open task), and an account named in HTML."""
    path = tmp_path_factory.mktemp("web") / "store.db"
    database = open_database(f"sqlite:///{path}")
    hostile = [(micros("2026-03-01T10:00:00+01:00"), {
        "type": "group", "messageId": "x-g1", "userId": "x-user", "groupId": "evil",
        "timestamp": "2026-03-01T09:00:00Z",
        "traits": {"name": "<script>alert('x')</script> Ltd", "segment": "smb", "tier": 3}})]
    simulate(database, playbook, [*onboarding("acme"), *hostile], until=NOW, deliver=SANDBOX)
    from firstvalue.runtime.routing import save_member

    with database.write() as conn:  # the CSM's login is Kim, whose address acme's tasks went to
        save_member(conn, "kim", "csm@example.com", "csm", 10, "Europe/Berlin", "Kim", NOW)
    add_users(database, NOW, {"csm": "kim"})
    database.dispose()
    return path


@pytest.fixture
def store(built, tmp_path):
    path = tmp_path / "store.db"
    shutil.copy(built, path)
    database = open_database(f"sqlite:///{path}")
    yield database
    database.dispose()


@pytest.fixture
def clock():
    return {"now": NOW}


@pytest.fixture
def client(store, playbook, clock):
    with TestClient(create_app(store, playbook, clock=lambda: clock["now"])) as test_client:
        yield test_client


def task_row(database, key=TASK):
    with database.engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM actions WHERE key = :k"), {"k": key}).one()


def test_pages_need_a_login_and_only_the_login_page_and_its_assets_answer_anyone(client):
    for path in ("/portfolio", "/accounts/acme", "/work", "/funnel", "/playbook",
                 "/deliveries", "/handoff/acme", "/ui/stamp", "/static/vega.js", "/"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next=")
    for path in ("/login", "/static/app.css", "/static/app.js", "/health"):
        assert client.get(path).status_code == 200, path


def test_a_login_sets_a_hardened_session_cookie_stored_hashed_and_logout_ends_it(client, store):
    page = client.get("/login")
    answer = client.post("/login", data={"csrf_token": csrf_of(page.text), "name": "csm",
                                         "password": PASSWORDS["csm"]}, follow_redirects=False)
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.get_list("set-cookie")
                  if c.startswith("fv_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    with store.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM web_sessions")).scalars().all()
        password = conn.execute(sa.text("SELECT password_hash FROM users WHERE name = 'csm'"
                                        )).scalar()
    assert stored == [hash_secret(token)]
    assert PASSWORDS["csm"] not in password and password.startswith("scrypt$")
    portfolio = client.get("/portfolio")
    assert portfolio.status_code == 200
    assert "script-src 'self'" in portfolio.headers["content-security-policy"]

    client.post("/logout", data={"csrf_token": csrf_of(portfolio.text)})
    assert client.get("/portfolio", follow_redirects=False).status_code == 303
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM web_sessions")).scalar() == 0


def test_a_wrong_password_is_refused_and_repeated_failures_lock_the_name(client):
    page = client.get("/login")
    token = csrf_of(page.text)
    for _ in range(5):
        wrong = client.post("/login", data={"csrf_token": token, "name": "admin",
                                            "password": "not-the-password"})
        assert wrong.status_code == 401
        assert "do not match" in wrong.text
    locked = client.post("/login", data={"csrf_token": token, "name": "admin",
                                         "password": PASSWORDS["admin"]})
    assert locked.status_code == 429
    assert "fv_session" not in client.cookies


def test_the_login_form_and_every_change_need_their_csrf_token(client, store):
    page = client.get("/login")
    no_token = client.post("/login", data={"name": "csm", "password": PASSWORDS["csm"]})
    assert no_token.status_code == 403
    assert "CSRF" in no_token.text
    csrf_of(page.text)

    token = log_in(client, "csm")
    for data in ({"key": TASK}, {"key": TASK, "csrf_token": "forged"},
                 {"key": TASK, "csrf_token": token + "x"}):
        refused = client.post("/tasks/done", data=data)
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    assert task_row(store).done_at is None

    # A token is bound to its session: another login's token does not pass.
    other = TestClient(client.app)
    other_token = log_in(other, "admin")
    assert client.post("/tasks/done", data={"key": TASK, "csrf_token": other_token}
                       ).status_code == 403
    assert task_row(store).done_at is None


def test_a_viewer_changes_nothing_in_the_browser_or_over_the_api(client, store):
    token = log_in(client, "viewer")
    page = client.get("/accounts/acme")
    assert page.status_code == 200
    assert "/tasks/done" not in page.text  # no buttons shown
    for path, data in (("/tasks/done", {"key": TASK}), ("/tasks/snooze", {"key": TASK,
                                                                           "days": "1"}),
                       ("/actions/cancel", {"key": TASK}), ("/actions/send", {"key": TASK}),
                       ("/deliveries/retry", {"action": TASK}),
                       ("/handoff/acme", {"field_use_case": "x"})):
        refused = client.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403, path
        assert "viewer" in refused.text
    assert task_row(store).done_at is None
    assert task_row(store).snoozed_until is None

    viewer = {"Authorization": f"Bearer {create_api_token(store, 'v', 'viewer', NOW)}"}
    assert client.post("/api/tasks/done", headers=viewer, json={"key": TASK}).status_code == 403
    assert client.put("/api/accounts/acme/handoff", headers=viewer,
                      json={"use_case": "x"}).status_code == 403
    assert task_row(store).done_at is None


def test_a_csm_completes_and_snoozes_tasks_from_the_work_queue(client, store, clock):
    token = log_in(client, "csm")
    work = client.get("/work")  # the login's own team member's queue by default
    assert "My work: kim" in work.text and "template_recommendation.session" in work.text
    nobody = client.get("/work?owner=nobody")
    assert "No team member or account owner is called nobody" in nobody.text
    assert "No open tasks." in nobody.text
    everyone = client.get("/work?owner=")
    assert "template_recommendation.session" in everyone.text

    snoozed = client.post("/tasks/snooze", data={"csrf_token": token, "key": TASK, "days": "3",
                                                 "back": "/work?owner="},
                          follow_redirects=False)
    assert snoozed.status_code == 303
    assert snoozed.headers["location"] == "/work?owner=&done=task_snoozed"
    assert task_row(store).snoozed_until == NOW + 3 * 86_400_000_000
    assert "template_recommendation.session" not in client.get("/work?owner=").text
    assert "snoozed until" in client.get("/accounts/acme").text
    # Once the snooze has run out, the task is open again, on the account page too.
    clock["now"] = NOW + 4 * 86_400_000_000
    token = log_in(client, "csm")  # the first session has expired meanwhile
    page = client.get("/accounts/acme").text
    row = page[page.find("template_recommendation.session"):][:600]
    assert "template_recommendation.session" in page and "<td>open" in row, row
    assert "snoozed until" not in page
    clock["now"] = NOW
    token = log_in(client, "csm")
    assert client.post("/tasks/snooze", data={"csrf_token": token, "key": TASK, "days": "99"}
                       ).status_code == 400

    done = client.post("/tasks/done", data={"csrf_token": token, "key": TASK,
                                            "back": "/accounts/acme"}, follow_redirects=False)
    assert done.status_code == 303
    row = task_row(store)
    assert row.done_at == NOW and row.changed_by == "csm"
    again = client.post("/tasks/done", data={"csrf_token": token, "key": TASK,
                                             "back": "/accounts/acme"})
    assert again.status_code == 409
    assert '<a href="/accounts/acme">Back to the page you came from</a>' in again.text


def test_the_portfolio_filters_sorts_searches_and_pages(client):
    log_in(client, "viewer")
    everything = client.get("/portfolio?status=all")
    assert everything.status_code == 200
    assert "Acme" in everything.text and "2 accounts" in everything.text
    by_segment = client.get("/portfolio?status=all&segment=smb")
    assert "1 account." in by_segment.text and "acme" not in by_segment.text.lower().replace(
        "search", "")
    owner = client.get("/portfolio?status=all&owner=csm@example.com")
    assert "Acme" in owner.text and "1 account." in owner.text
    search = client.get("/portfolio?status=all&q=ACM")
    assert "1 account." in search.text
    paged = client.get("/portfolio?status=all&sort=name&per_page=1&page=2")
    assert "page 2 of 2" in paged.text
    assert 'rel="prev"' in paged.text
    bad = client.get("/portfolio?sort=sideways")
    assert bad.status_code == 400
    assert "sort=&#39;sideways&#39;" in bad.text and "risk" in bad.text
    assert client.get("/portfolio?tier=first").status_code == 400


def test_an_account_name_holding_html_is_shown_as_text(client):
    log_in(client, "admin")
    for path in ("/portfolio?status=all", "/accounts/evil", "/handoff/evil"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; Ltd" in page.text, path


def test_the_account_page_shows_the_deal_contacts_milestones_and_reasons(client):
    log_in(client, "csm")
    page = client.get("/accounts/acme").text
    assert "lead_enrichment" in page  # the handoff's use case
    assert "Kim" in page and "champion" in page  # the contact and their role
    assert "Account configured" in page or "account_configured" in page
    assert "Why: rule welcome" in page  # every action's reason
    assert "Stakeholders named in the handoff" in page
    assert client.get("/accounts/nobody").status_code == 404


def test_the_handoff_form_names_each_field_with_a_problem_and_stores_nothing(client, store,
                                                                             clock):
    token = log_in(client, "csm")
    form = client.get("/handoff/evil")
    assert form.status_code == 200 and 'name="field_use_case"' in form.text
    missing = client.post("/handoff/evil", data={
        "csrf_token": token, "intent": "submit", "field_use_case": "lead_enrichment",
        "field_stakeholders": "Dana Reyes champion", "field_success_criteria": "",
        "field_technical_requirements": "crm: hubspot", "field_commitments": "weekly calls"})
    assert missing.status_code == 400
    assert 'id="error-stakeholders"' in missing.text and "Name (role)" in missing.text
    assert 'id="error-success_criteria"' in missing.text and "required" in missing.text
    assert 'id="error-use_case"' not in missing.text
    assert 'value="lead_enrichment"' in missing.text  # what was typed is kept
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM handoffs WHERE account_id = 'evil'")
                            ).scalar() == 0

    saved = client.post("/handoff/evil", data={
        "csrf_token": token, "intent": "submit", "field_use_case": "lead_enrichment",
        "field_stakeholders": "Dana Reyes (champion) <dana@example.com>\nLee (economic buyer)",
        "field_success_criteria": "first enriched lead\nten users",
        "field_technical_requirements": "crm: hubspot\nsso: okta",
        "field_commitments": "weekly calls"}, follow_redirects=False)
    assert saved.status_code == 303
    assert saved.headers["location"] == "/accounts/evil?done=handoff_saved"
    answer = client.get("/api/accounts/evil/handoff", headers={
        "Authorization": f"Bearer {create_api_token(store, 'r', 'viewer', NOW)}"}).json()
    assert answer["complete"] is True
    assert answer["record"]["stakeholders"] == [
        {"name": "Dana Reyes", "role": "champion", "email": "dana@example.com"},
        {"name": "Lee", "role": "economic buyer"}]
    assert answer["record"]["technical_requirements"] == {"crm": "hubspot", "sso": "okta"}


def test_a_handoff_can_be_saved_incomplete_on_purpose(client, store):
    token = log_in(client, "csm")
    saved = client.post("/handoff/evil", data={"csrf_token": token, "intent": "save_incomplete",
                                               "field_use_case": "lead_enrichment"},
                        follow_redirects=False)
    assert saved.headers["location"] == "/accounts/evil?done=handoff_incomplete"
    with store.engine.connect() as conn:
        missing = conn.execute(sa.text("SELECT missing FROM handoffs WHERE account_id = 'evil'"
                                       )).scalar()
    assert "stakeholders" in missing


def test_a_pending_action_is_sent_early_or_cancelled_and_stays_cancelled(client, store,
                                                                         playbook, clock):
    from firstvalue.actions.dispatch import Dispatcher

    # No login for two weeks: re-engagement comes due at night, outside the send window.
    later = micros("2026-04-02T03:00:00+02:00")
    tick(store, playbook, later)
    with store.engine.connect() as conn:
        pending = {r.rule: r.key for r in conn.execute(sa.text(
            "SELECT key, rule FROM actions WHERE status = 'pending' AND account_id = 'acme'"))}
    assert {"re_engagement", "re_engagement.manager"} <= set(pending), pending
    clock["now"] = later
    token = log_in(client, "csm")

    # Cancel one while it is due: it stays cancelled when the engine looks again.
    cancelled = client.post("/actions/cancel", data={"csrf_token": token,
                                                     "key": pending["re_engagement.manager"]})
    assert cancelled.status_code == 200  # followed back to the portfolio
    row = task_row(store, pending["re_engagement.manager"])
    assert row.status == "cancelled" and row.reason.startswith("cancelled from the dashboard")
    assert row.changed_by == "csm"

    # The email waits for the contact's send window; Send now makes it due at once.
    Dispatcher(store, playbook, SANDBOX).run_once(later)
    waiting = task_row(store, pending["re_engagement"])
    assert waiting.status == "pending" and waiting.next_attempt_at > later
    page = client.get("/accounts/acme").text
    assert "Send now" in page and "the next attempt is at" in page
    sent = client.post("/actions/send", data={"csrf_token": token, "key": pending["re_engagement"],
                                              "back": "/accounts/acme"}, follow_redirects=False)
    assert sent.status_code == 303
    row = task_row(store, pending["re_engagement"])
    assert row.next_attempt_at == later and row.changed_by == "csm"
    assert row.reason.endswith("; released early from the dashboard by csm")
    again = client.post("/actions/send", data={"csrf_token": token,
                                               "key": pending["re_engagement"]})
    assert again.status_code == 409 and "due already" in again.text
    assert task_row(store, pending["re_engagement"]).reason == row.reason
    # Still night: the dispatcher defers it again; a second release does not grow the reason.
    Dispatcher(store, playbook, SANDBOX).run_once(later)
    assert task_row(store, pending["re_engagement"]).next_attempt_at > later
    assert client.post("/actions/send", data={"csrf_token": token,
                                              "key": pending["re_engagement"]},
                       follow_redirects=False).status_code == 303
    assert task_row(store, pending["re_engagement"]).reason == row.reason

    tick(store, playbook, later + 3_600_000_000)
    assert task_row(store, pending["re_engagement.manager"]).status == "cancelled"
    timeline = client.get("/accounts/acme").text
    assert "Why: cancelled from the dashboard by csm" in timeline


def test_the_stamp_moves_when_a_tick_writes_and_the_portfolio_follows(client, store, playbook,
                                                                     clock, monkeypatch):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    monkeypatch.setattr("firstvalue.web.pages.STAMP_SECONDS", 0.0)  # no second's cache here

    log_in(client, "viewer")
    before = client.get("/ui/stamp").json()["stamp"]
    assert client.get("/ui/stamp").json()["stamp"] == before
    assert "day 11" in client.get("/portfolio?q=acme").text
    later = NOW + 86_400_000_000
    ingest_messages(store, [encode(track("acme", "data", "Data Source Connected",
                                         "2026-03-14T10:00:00+01:00"))], later,
                    playbook.anchor_names)
    tick(store, playbook, later)
    clock["now"] = later
    # A day on, the session (12 hours) has ended: the login is asked for again.
    assert client.get("/ui/stamp", follow_redirects=False).status_code == 303
    log_in(client, "viewer")
    assert client.get("/ui/stamp").json()["stamp"] != before
    page = client.get("/portfolio?q=acme").text
    assert "day 12" in page
    assert "Data connected: done" in page


def test_funnel_playbook_and_deliveries_pages(client, store):
    token = log_in(client, "admin")
    funnel = client.get("/funnel")
    assert funnel.status_code == 200
    assert 'type="application/json" id="spec-ttv"' in funnel.text
    assert 'id="spec-funnel"' in funnel.text and "Phase decomposition" in funnel.text
    assert "'unsafe-eval'" in funnel.headers["content-security-policy"]
    assert "/static/vega.js" in funnel.text
    playbook_page = client.get("/playbook").text
    assert "default@" in playbook_page and "valid" in playbook_page

    with store.write() as conn:
        conn.execute(sa.text("UPDATE actions SET status = 'dead', error = 'SMTP refused' "
                             "WHERE key = :k"), {"k": TASK})
    deliveries = client.get("/deliveries").text
    assert "SMTP refused" in deliveries and "1 dead-lettered" in deliveries
    retried = client.post("/deliveries/retry", data={"csrf_token": token, "action": TASK},
                          follow_redirects=False)
    assert retried.headers["location"] == "/deliveries?done=retried"
    assert task_row(store).status == "pending"
    assert client.post("/deliveries/retry", data={"csrf_token": token, "action": TASK}
                       ).status_code == 409


def test_the_login_redirect_stays_on_this_site(client):
    page = client.get("/login?next=//evil.example/x")
    assert 'name="next" value="/portfolio"' in page.text
    answer = client.post("/login", data={"csrf_token": csrf_of(page.text), "name": "viewer",
                                         "password": PASSWORDS["viewer"],
                                         "next": "https://evil.example/"},
                         follow_redirects=False)
    assert answer.headers["location"] == "/portfolio"
    kept = client.get("/login?next=/accounts/acme")
    assert 'name="next" value="/accounts/acme"' in kept.text
    for sneaky in ("/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example"):
        page = client.get("/login", params={"next": sneaky})
        assert 'name="next" value="/portfolio"' in page.text, sneaky


def test_an_oversized_or_malformed_form_is_refused_clearly(client):
    token = log_in(client, "csm")
    big = client.post("/tasks/done", content=b"csrf_token=" + token.encode() + b"&key="
                      + b"x" * 70_000, headers={"content-type":
                                                "application/x-www-form-urlencoded"})
    assert big.status_code == 413 and "KiB" in big.text
    garbled = client.post("/tasks/done", content=b"\xff\xfe", headers={
        "content-type": "application/x-www-form-urlencoded"})
    assert garbled.status_code == 400


def test_the_dashboard_reads_and_writes_on_both_stores(database, playbook):
    """The portfolio's refresh, the stamp and a form's write on SQLite and on PostgreSQL."""
    simulate(database, playbook, onboarding("acme"), until=NOW, deliver=SANDBOX)
    add_users(database, NOW)
    with TestClient(create_app(database, playbook, clock=lambda: NOW)) as client:
        token = log_in(client, "csm")
        page = client.get("/portfolio")
        assert "Acme" in page.text and "day 11" in page.text
        stamp = client.get("/ui/stamp").json()["stamp"]
        done = client.post("/tasks/done", data={"csrf_token": token, "key": TASK},
                           follow_redirects=False)
        assert done.status_code == 303
        assert task_row(database).done_at == NOW
        assert client.get("/ui/stamp").json()["stamp"] != stamp
        assert client.get("/accounts/acme").status_code == 200


def test_the_portfolio_follows_a_tick_run_at_an_earlier_time(store, playbook):
    """Its refresh reads only what was evaluated since its last look; an account evaluated
    again at an earlier time (a tick with --now in the past) is caught by its fingerprint."""
    from firstvalue.ingest.service import ingest_messages
    from firstvalue.web.portfolio import Portfolio
    from tests.conftest import encode

    portfolio = Portfolio(store)
    before = portfolio.get("acme")
    assert dict((k, m) for k, m, _ in before.marks(NOW))["data_connected"] == "overdue"
    from firstvalue.clock import isoformat

    with store.engine.connect() as conn:
        evaluated = conn.execute(sa.text("SELECT evaluated_at FROM accounts WHERE id = 'acme'"
                                         )).scalar()
    earlier = evaluated - 60_000_000  # a minute before its last evaluation
    ingest_messages(store, [encode(track("acme", "data", "Data Source Connected",
                                         isoformat(earlier - 3_600_000_000)))], earlier,
                    playbook.anchor_names)
    tick(store, playbook, earlier)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT evaluated_at FROM accounts WHERE id = 'acme'")
                            ).scalar() == earlier
    after = portfolio.get("acme")
    assert after is not before
    assert dict((k, m) for k, m, _ in after.marks(NOW))["data_connected"] == "done_late"
    assert portfolio.get("evil") is not None  # the others are still there


def test_the_portfolio_names_the_kinds_of_the_other_open_stalls(client, store):
    # acme has four open stalls by day 11: inactivity (shown) and three more, of two kinds
    # (champion silent, and two overdue milestones). The note lists the others' kinds only.
    log_in(client, "viewer")
    flat = " ".join(client.get("/portfolio").text.split())
    assert "; 3 more open (champion silent, overdue)" in flat


def test_the_stall_filter_matches_any_open_stall_of_an_account(client, store):
    from firstvalue.web.portfolio import Portfolio

    log_in(client, "viewer")
    [acme] = [r for r in Portfolio(store).rows() if r.id == "acme"]
    assert acme.stall_kinds, "acme has an open stall by day 11"
    for kind in acme.stall_kinds:  # every kind it has finds it, not only the one shown
        assert "Acme" in client.get(f"/portfolio?stall={kind}").text
    missing = {"inactivity", "overdue", "missed_calls", "champion_silent"} - acme.stall_kinds
    for kind in missing:
        assert "Acme" not in client.get(f"/portfolio?stall={kind}").text
    refused = client.get("/portfolio?stall=bogus")
    assert refused.status_code == 400 and "stall=&#39;bogus&#39;" in refused.text
    assert "Acme" in client.get("/portfolio?owner=csm@example.com").text
    assert "Acme" not in client.get("/portfolio?owner=(none)&status=all").text
    assert "Ltd" in client.get("/portfolio?owner=(none)&status=all").text  # evil has no owner


def test_a_viewer_reads_the_handoff_without_a_form(client):
    log_in(client, "viewer")
    page = client.get("/handoff/acme")
    assert page.status_code == 200
    assert "<form method=\"post\" action=\"/handoff" not in page.text
    assert "You are logged in as a viewer" in page.text


def test_a_login_can_only_be_linked_to_a_team_member_on_the_roster(store):
    from firstvalue.errors import ConfigError
    from firstvalue.web.auth import save_user

    with pytest.raises(ConfigError, match="no team member 'ghost'"):
        save_user(store, "ghost", "csm", "ghost-password-1", "ghost", NOW)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 FROM users WHERE name = 'ghost'")).first() is None


def test_hostile_handoff_input_gets_an_error_by_its_field_and_holds_nobody_up(client, store):
    token = log_in(client, "csm")
    cases = {
        # A line of spaces once took a backtracking pattern seconds, holding every request.
        "field_stakeholders": "a" + " " * 40_000 + "a",
        "field_technical_requirements": '{"a":' + "[" * 3000 + "]" * 3000 + "}",
        "field_success_criteria": "",
    }
    answer = client.post("/handoff/acme", data={"csrf_token": token, "intent": "submit",
                                                "field_use_case": "x", **cases})
    assert answer.status_code == 400
    assert 'id="error-stakeholders"' in answer.text
    assert "nested too deeply" in answer.text
    nul = client.post("/handoff/acme", data={"csrf_token": token, "intent": "save_incomplete",
                                             "field_technical_requirements": '{"a": "x\\u0000y"}'})
    assert nul.status_code == 400 and "NUL" in nul.text
    typed = client.post("/handoff/acme", data={"csrf_token": token, "intent": "save_incomplete",
                                               "field_use_case": "C:\\u0000dir"})
    assert typed.status_code in (200, 303) and "NUL" not in typed.text
    assert client.post("/handoff/acme", content=b"csrf_token=" + token.encode(),
                       headers={"content-type": "text/plain"}).status_code == 415


def test_a_handoff_trait_of_any_shape_shows_on_the_account_page(client, store, playbook):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    ingest_messages(store, [encode({
        "type": "group", "messageId": "odd-handoff", "userId": "x-user", "groupId": "evil",
        "timestamp": "2026-03-12T09:00:00Z",
        "traits": {"handoff": {"notes": 1, "goals": None, "nested": {"a": [1, {"b": "<i>"}]},
                               "people": [{"name": "Dee", "role": "buyer", "title": "VP"}]}}})],
        NOW, playbook.anchor_names)
    log_in(client, "viewer")
    page = client.get("/accounts/evil")
    assert page.status_code == 200
    assert "Dee (buyer), VP" in page.text and "<i>" not in page.text


def test_the_login_throttle_counts_guesses_sent_at_once(store):
    from concurrent.futures import ThreadPoolExecutor

    from firstvalue.web.auth import LoginThrottle

    throttle = LoginThrottle(limit=5)
    with ThreadPoolExecutor(8) as pool:
        allowed = list(pool.map(lambda _: throttle.attempt("racer"), range(60)))
    assert allowed.count(True) == 5
    small = LoginThrottle(limit=2, names=10)
    assert small.attempt("locked") and small.attempt("locked") and not small.attempt("locked")
    for n in range(50):  # a flood of other names does not free the refused one
        small.attempt(f"spray{n}")
    assert not small.attempt("locked")
    assert len(small._attempts) <= 11


def test_an_account_id_with_slashes_and_dots_links_to_itself(client, store, playbook):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    ingest_messages(store, [encode({
        "type": "group", "messageId": "slashy", "userId": "s-user", "groupId": "org/42/../..",
        "timestamp": "2026-03-12T09:00:00Z", "traits": {"name": "Slashy"}})],
        NOW, playbook.anchor_names)
    tick(store, playbook, NOW)
    log_in(client, "viewer")
    portfolio = client.get("/portfolio?status=all&q=slashy").text
    assert 'href="/accounts/org%2F42%2F..%2F.."' in portfolio
    assert client.get("/accounts/org%2F42%2F..%2F..").status_code == 200


def test_people_are_read_from_the_right_in_one_pass():
    from firstvalue.engine.handoff import parse_person

    assert parse_person("Dana Reyes (champion) <dana@example.com>") == {
        "name": "Dana Reyes", "role": "champion", "email": "dana@example.com"}
    assert parse_person("  Lee (economic buyer) ") == {"name": "Lee", "role": "economic buyer"}
    for bad in ("Dana Reyes champion", "(champion)", "Dana ()", "Dana (a) (b)", "Dana <x>",
                "Da(na (champion)", "Dana (champion) <>", "a" + " " * 40_000 + "a"):
        assert parse_person(bad) is None, bad


def test_a_dead_crm_row_is_retried_from_the_deliveries_page(client, store):
    with store.write() as conn:
        conn.execute(sa.text(
            "INSERT INTO crm_sync (connector, record_type, record_id, account_id, desired, "
            "status, attempts, error, changed_at) VALUES ('hubspot', 'company', 'acme', 'acme', "
            "'{}', 'dead', 8, 'HTTP 400: property missing', :now)"), {"now": NOW})
    token = log_in(client, "admin")
    page = client.get("/deliveries").text
    assert "HTTP 400: property missing" in page and "Retry" in page
    retried = client.post("/deliveries/retry", data={"csrf_token": token, "connector": "hubspot",
                                                     "record": "acme"}, follow_redirects=False)
    assert retried.headers["location"] == "/deliveries?done=retried"
    with store.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, attempts FROM crm_sync")).one()
    assert tuple(row) == ("pending", 0)
    assert client.post("/deliveries/retry", data={"csrf_token": token}).status_code == 400


def test_an_account_id_of_dots_is_reached_through_the_query(client, store, playbook):
    from firstvalue.ingest.service import ingest_messages
    from tests.conftest import encode

    ingest_messages(store, [encode({
        "type": "group", "messageId": f"dots-{n}", "userId": "d-user", "groupId": dots,
        "timestamp": "2026-03-12T09:00:00Z", "traits": {"name": f"Dots {n}"}})
        for n, dots in enumerate((".", ".."))], NOW, playbook.anchor_names)
    tick(store, playbook, NOW)
    token = log_in(client, "csm")
    portfolio = client.get("/portfolio?status=all&q=dots").text
    assert 'href="/accounts?id=."' in portfolio and 'href="/accounts?id=.."' in portfolio
    page = client.get("/accounts?id=..")
    assert page.status_code == 200 and "Dots 1" in page.text
    assert 'href="/handoff?id=.."' in page.text
    saved = client.post("/handoff?id=..", data={"csrf_token": token, "intent": "save_incomplete",
                                               "field_use_case": "lead_enrichment"},
                        follow_redirects=False)
    assert saved.headers["location"] == "/accounts?id=..&done=handoff_incomplete"
    assert client.get("/accounts").status_code == 404


def test_a_handoff_nested_too_deeply_is_refused_by_its_field_on_every_path(client, store):
    deep = '{"a":' + "[" * 990 + "]" * 990 + "}"
    token = log_in(client, "csm")
    answer = client.post("/handoff/acme", data={"csrf_token": token, "intent": "save_incomplete",
                                                "field_technical_requirements": deep})
    assert answer.status_code == 400 and "nested deeper than 16 levels" in answer.text
    api = client.put("/api/accounts/acme/handoff", content=deep.replace('{"a":', '{"commitments":'),
                     headers={"Authorization": "Bearer "
                              + create_api_token(store, "w", "csm", NOW)})
    assert api.status_code == 400 and "nested deeper" in api.text
    assert client.get("/accounts/acme").status_code == 200


def test_a_finished_runs_unreached_milestone_is_missed_not_overdue():
    from datetime import date

    from firstvalue.web.portfolio import _Milestone
    from firstvalue.web.portfolio import milestone_mark as _mark

    late = _Milestone(key="first_value", status="open", due_on="2026-01-10", overdue_days=30)
    assert _mark(late, date(2026, 2, 9)) == "overdue"
    assert _mark(late, date(2026, 2, 9), ended=True) == "missed"
    done = _Milestone(key="first_value", status="done", on_time=False)
    assert _mark(done, date(2026, 2, 9), ended=True) == "done_late"


def test_password_checks_run_one_at_a_time_whatever_the_names(store, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from firstvalue.web import auth

    running, most = [0], [0]
    lock = threading.Lock()
    check = auth.password_matches

    def counted(password, stored):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return check(password, stored)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(auth, "password_matches", counted)
    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda n: auth.log_in(store, f"sprayed-{n}", "x" * 12, NOW),
                               range(16)))
    assert tokens == [None] * 16 and most[0] == 1


def test_a_login_that_waits_too_long_for_its_check_is_told_to_retry_and_not_counted(
        client, monkeypatch):
    from firstvalue.web import auth

    monkeypatch.setattr(auth, "LOGIN_WAIT_SECONDS", 0.05)
    token = csrf_of(client.get("/login").text)
    auth._password_checks.acquire()  # another login's check, holding on
    try:
        for _ in range(6):
            busy = client.post("/login", data={"csrf_token": token, "name": "admin",
                                               "password": PASSWORDS["admin"]})
            assert busy.status_code == 503
            assert busy.headers["retry-after"] == "1"
            assert "try again in a few seconds" in busy.text
    finally:
        auth._password_checks.release()
    # Six refusals for want of a turn did not use up the name's five attempts.
    done = client.post("/login", data={"csrf_token": token, "name": "admin",
                                       "password": PASSWORDS["admin"]}, follow_redirects=False)
    assert done.status_code == 303 and "fv_session" in client.cookies


def test_a_failure_is_answered_as_a_page_or_as_json_with_the_usual_headers(client, store,
                                                                           monkeypatch):
    from firstvalue.api import app as api_app
    from firstvalue.web import views

    def broken(*_args, **_kwargs):
        raise RuntimeError("a fault in firstvalue")

    log_in(client, "viewer")
    monkeypatch.setattr(views, "next_actions", broken)
    monkeypatch.setattr(api_app, "_account_page", broken)

    page = client.get("/portfolio", headers={"Accept": "text/html"})
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in page.text and "a fault in firstvalue" not in page.text
    for header in ("content-security-policy", "x-frame-options", "cache-control",
                   "x-content-type-options", "referrer-policy"):
        assert header in page.headers

    token = create_api_token(store, "viewer", "viewer", NOW)
    answer = client.get("/api/accounts", headers={"Authorization": f"Bearer {token}",
                                                  "Accept": "text/html"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_an_unknown_page_is_a_page_for_a_browser_and_a_wrong_method_names_the_allowed_ones(
        client):
    log_in(client, "viewer")
    missing = client.get("/portfolio/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert missing.status_code == 404 and "<h1>Not Found</h1>" in missing.text
    assert "content-security-policy" in missing.headers
    assert client.get("/portfolio/").json()["error"]["code"] == "not_found"
    for machine in ("/api", "/v1", "/webhooks"):
        answer = client.get(machine, headers={"Accept": "text/html"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    nul = client.get("/portfolio?x=%00", headers={"Accept": "text/html"})
    assert nul.status_code == 400 and nul.headers["x-content-type-options"] == "nosniff"

    wrong = client.delete("/portfolio")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert client.put("/api/accounts").headers["allow"] == "GET"


def test_the_work_queue_names_whom_each_task_is_for_and_leaves_out_what_cleared(client,
                                                                                 store):
    log_in(client, "csm")
    mine = client.get("/work").text
    assert "template_recommendation.session" in mine
    assert "<td>kim</td>" in mine  # the task went to kim's address
    assert '<option value="kim" selected>kim</option>' in mine  # the roster is in the list

    # acme's owner is set by the CRM as an address, kim's: her queue has its owner's tasks.
    # When her address changes, they stay with the owner the account names, whose queue an
    # address not on the roster has too.
    with store.write() as conn:
        conn.execute(sa.text("UPDATE team_members SET email = 'kim.new@example.com' "
                             "WHERE handle = 'kim'"))
    assert "template_recommendation.session" not in client.get("/work").text
    by_address = client.get("/work?owner=csm%40example.com").text
    assert "template_recommendation.session" in by_address
    assert "No team member or account owner is called" not in by_address
    with store.write() as conn:
        conn.execute(sa.text("UPDATE team_members SET email = 'csm@example.com' "
                             "WHERE handle = 'kim'"))

    # The same task, had it been for the account's AE: it is not kim's, though acme is.
    with store.write() as conn:
        conn.execute(sa.text("UPDATE actions SET recipient = 'ae', assignee = NULL "
                             "WHERE key = :k"), {"k": TASK})
    assert "template_recommendation.session" not in client.get("/work").text
    everyone = client.get("/work?owner=").text
    assert "template_recommendation.session" in everyone
    assert "ae (no address yet)" in everyone

    # Once its condition cleared, it leaves the queue, which counts it among those left out.
    def left_out(page: str) -> int:
        found = re.search(r"(\d+) more (?:is|are) left out: (?:its|their) condition cleared",
                          page)
        return int(found.group(1)) if found else 0

    before = left_out(everyone)
    with store.write() as conn:
        conn.execute(sa.text("UPDATE actions SET resolved_at = :now WHERE key = :k"),
                     {"now": NOW, "k": TASK})
    everyone = client.get("/work?owner=").text
    assert "template_recommendation.session" not in everyone
    assert left_out(everyone) == before + 1


def test_the_account_page_marks_a_finished_runs_open_milestones_as_the_portfolio_does(
        client, clock):
    log_in(client, "viewer")
    during = client.get("/accounts/acme").text
    milestones = during[during.index('id="milestones"'):during.index('id="pending"')]
    assert "overdue" in milestones or "upcoming" in milestones or "due" in milestones

    clock["now"] = NOW + 200 * 86_400_000_000  # long past the mid-market track's end day
    log_in(client, "viewer")  # the session of 200 days ago has expired
    after = client.get("/accounts/acme").text
    milestones = after[after.index('id="milestones"'):after.index('id="pending"')]
    assert "not reached, the run ended" in milestones
    assert "overdue" not in milestones


def test_the_pages_say_which_channels_are_not_set_up(client, monkeypatch):
    for name in ("FIRSTVALUE_SMTP_HOST", "FIRSTVALUE_SLACK_WEBHOOK_URL",
                 "FIRSTVALUE_WEBHOOK_URL", "FIRSTVALUE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    log_in(client, "viewer")
    deliveries = client.get("/deliveries").text
    assert "Not set up on this server" in deliveries
    assert "email: set FIRSTVALUE_SMTP_HOST" in deliveries

    monkeypatch.setenv("FIRSTVALUE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FIRSTVALUE_SLACK_WEBHOOK_URL", "http://127.0.0.1:9/slack")
    monkeypatch.setenv("FIRSTVALUE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("FIRSTVALUE_WEBHOOK_SECRET", "whsec_" + "A" * 32)
    assert "Not set up on this server" not in client.get("/deliveries").text


def test_backticked_words_in_a_message_show_as_code_and_the_rest_is_escaped(client):
    log_in(client, "viewer")
    missing = client.get("/accounts/%3Cb%3Enope%3C%2Fb%3E")
    assert missing.status_code == 404
    assert "<code>group</code>" in missing.text and "`" not in missing.text
    assert "<b>nope</b>" not in missing.text


def test_one_change_after_another_leaves_one_notice_in_the_address(client, store):
    token = log_in(client, "csm")
    snoozed = client.post("/tasks/snooze", data={"csrf_token": token, "key": TASK, "days": "1",
                                                 "back": "/work?owner=&done=task_done&page=1"},
                          follow_redirects=False)
    assert snoozed.headers["location"] == "/work?owner=&page=1&done=task_snoozed"


def test_the_handoff_form_names_the_use_cases_that_have_a_path(client):
    log_in(client, "csm")
    form = client.get("/handoff/acme").text
    assert ("These use cases have an onboarding path of their own: lead_enrichment, "
            "competitive_intelligence") in form


def test_logins_beyond_the_few_in_flight_are_turned_away_before_they_take_a_thread(
        client, monkeypatch):
    from firstvalue.web import auth

    checked = []
    monkeypatch.setattr(auth, "log_in", lambda *args: checked.append(args) or None)
    dashboard = client.app.state.dashboard
    token = csrf_of(client.get("/login").text)
    dashboard.logins_in_flight = auth.LOGINS_IN_FLIGHT  # as if that many were waiting
    try:
        busy = client.post("/login", data={"csrf_token": token, "name": "admin",
                                           "password": "whatever-it-is"})
    finally:
        dashboard.logins_in_flight = 0
    assert busy.status_code == 503 and busy.headers["retry-after"]
    assert checked == []
    assert client.post("/login", data={"csrf_token": token, "name": "admin",
                                       "password": "whatever-it-is"}).status_code == 401
    assert len(checked) == 1 and dashboard.logins_in_flight == 0


def test_the_deliveries_page_says_what_a_pending_action_waits_for(client, store):
    with store.write() as conn:
        conn.execute(sa.text("UPDATE actions SET status = 'pending', error = NULL, "
                             "next_attempt_at = :later WHERE key = :k"),
                     {"later": NOW + 3_600_000_000, "k": TASK})
    log_in(client, "viewer")
    page = client.get("/deliveries").text
    assert "waits for the contact's send window or daily cap, until 2026-03-13 12:00" in page
