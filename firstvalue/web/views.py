"""What each dashboard page shows, and what each of its forms changes.

Each function takes the dashboard, the request, the logged-in user and the checked form (for
a POST) and answers a response; they run in a worker thread, so they may read the store.
"""

from __future__ import annotations

import urllib.parse
import zoneinfo
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import Response

from firstvalue.clock import isoformat
from firstvalue.engine.days import local_date
from firstvalue.engine.days import zone as find_zone
from firstvalue.store.database import holds_nul
from firstvalue.web.auth import WebUser
from firstvalue.web.pages import Dashboard, Redirect, Refused
from firstvalue.web.portfolio import (
    PAGE_SIZES,
    SORTS,
    STALL_KINDS,
    STATUSES,
    UNOWNED,
    Query,
    milestone_mark,
    next_actions,
)

DAY = 86_400_000_000
WORK_PAGE = 100  # tasks a page of the work queue
SNOOZE_DAYS = (1, 3, 7)
NOTICES = {  # what a finished change says on the page it returns to (never the request's text)
    "task_done": "The task is marked done.",
    "task_snoozed": "The task is snoozed; it comes back to the queue when the time is up.",
    "sent": "The action is released: the dispatcher sends it on its next run (within a "
            "minute under `firstvalue serve`), inside the contact's send window, once its "
            "channel is set up.",
    "cancelled": "The action is cancelled; the engine will not plan it again.",
    "retried": "The delivery is queued again.",
    "handoff_saved": "The handoff is saved.",
    "handoff_incomplete": "The handoff is saved, with required fields still missing.",
}


def portfolio_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    query = _portfolio_query(request.query_params)
    page = d.portfolio.page(query)
    actions = next_actions(d.database, [row.id for row in page.rows])
    now = d.now
    return d.render(request, "portfolio.html", user, page=page, actions=actions, now=now,
                    sorts=SORTS, statuses=STATUSES, page_sizes=PAGE_SIZES, unowned=UNOWNED,
                    stall_kinds=STALL_KINDS,
                    link=lambda **changes: _link("/portfolio", query, changes))


def _portfolio_query(params: Any) -> Query:
    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = params.get(name) or default
        if value not in allowed:
            raise Refused(400, "Unknown filter value", f"{name}={value!r} is not one of "
                          f"{', '.join(allowed)}; pick one from the form.")
        return value

    def number(name: str, default: int | None, low: int, high: int) -> int | None:
        raw = params.get(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise Refused(400, "Unknown filter value", f"{name}={raw!r} must be a whole "
                          f"number from {low} to {high}.")
        return value

    per_page = number("per_page", 50, 1, max(PAGE_SIZES))
    stall = params.get("stall") or None
    if stall is not None:
        choice("stall", ("open", "none", *STALL_KINDS), "open")
    return Query(owner=params.get("owner") or None, segment=params.get("segment") or None,
                 tier=number("tier", None, 0, 99), track=params.get("track") or None,
                 stall=stall,
                 status=choice("status", STATUSES, "onboarding"),
                 q=(params.get("q") or "")[:200], sort=choice("sort", SORTS, "risk"),
                 descending=params.get("order") == "desc",
                 page=number("page", 1, 1, 10**6) or 1, per_page=per_page or 50)


def _link(path: str, query: Query, changes: dict[str, Any]) -> str:
    values = {"owner": query.owner, "segment": query.segment, "tier": query.tier,
              "track": query.track, "stall": query.stall, "status": query.status,
              "q": query.q, "sort": query.sort, "order": "desc" if query.descending else None,
              "page": query.page, "per_page": query.per_page}
    values.update(changes)
    kept = {k: v for k, v in values.items() if v not in (None, "")}
    return path + "?" + urllib.parse.urlencode(kept)


def account_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    from firstvalue.runtime.evaluation import evaluate_accounts
    from firstvalue.runtime.handoff import handoff_json
    from firstvalue.runtime.timeline import account_view

    account_id = _account_id(request)
    now = d.now
    states = evaluate_accounts(d.database, d.context.playbook, now, [account_id])
    if not states:
        raise Refused(404, "No such account", f"There is no account {account_id!r}. "
                      "Accounts come from `group` calls and closed-won CRM deals.")
    state = states[0]
    view = account_view(d.database, state, now)
    settings = d.context.playbook.loaded.model.handoff
    with d.database.engine.connect() as conn:
        handoff = handoff_json(conn, settings, account_id)
        if not handoff["submitted_at"]:
            handoff = {**handoff, **_handoff_trait(conn, account_id, state)}
        contacts = _contacts(conn, account_id)
        times = conn.execute(sa.text(
            "SELECT key, kind, status, snoozed_until, next_attempt_at FROM actions "
            "WHERE account_id = :a"), {"a": account_id}).all()
    # A snooze that has run out is over: the task is open again, as in the work queue.
    snoozed = {row.key: row.snoozed_until for row in times
               if row.kind == "task" and row.snoozed_until is not None
               and row.snoozed_until > now}
    waits = {row.key: row.next_attempt_at for row in times
             if row.status in ("pending", "failed") and row.next_attempt_at is not None
             and row.next_attempt_at > now}
    actions = view["actions"]
    pending = [a for a in actions if a["status"] in ("pending", "failed")]
    tasks = [a for a in actions if a["kind"] == "task" and a["status"] == "sent"]
    fields = {f.key: f for f in settings.fields}
    today = local_date(now, find_zone(state.timezone) or zoneinfo.ZoneInfo("UTC"))
    marks = {m.key: milestone_mark(m, today, state.run_ended) for m in state.milestones}
    stakeholders = [p for value in (handoff.get("record") or {}).values()
                    if isinstance(value, list) for p in value
                    if isinstance(p, dict) and isinstance(p.get("name"), str)
                    and isinstance(p.get("role"), str)]
    return d.render(request, "account.html", user, state=state, view=view, handoff=handoff,
                    marks=marks, stakeholders=stakeholders,
                    handoff_fields=fields, contacts=contacts, pending=pending, tasks=tasks,
                    snoozed=snoozed, waits=waits,
                    snooze_days=SNOOZE_DAYS, notice=NOTICES.get(request.query_params.get(
                        "done", "")), back=account_path(account_id))


def _handoff_trait(conn: sa.Connection, account_id: str, state: Any) -> dict[str, Any]:
    """A handoff sent as the account's `handoff` trait (as a CRM sends it), shown as the deal
    context when no handoff was submitted to firstvalue itself."""
    from firstvalue.store.traits import plain_traits

    traits = conn.execute(sa.text("SELECT traits FROM accounts WHERE id = :a"),
                          {"a": account_id}).scalar()
    record = plain_traits(msgspec.json.decode(traits)).get("handoff") if traits else None
    if not isinstance(record, dict):
        return {}
    status = state.handoff or {}
    return {"record": record, "source": "the account's handoff trait",
            "complete": bool(status.get("complete")), "completed_at": status.get(
                "completed_at"), "missing": status.get("missing") or []}


def account_path(account_id: str, page: str = "accounts") -> str:
    """The account page's path (or its handoff form's), the id quoted whole: an id may hold
    `/`, `?` or `..`. An id that is all dots would be a path's `.` or `..`, which browsers
    resolve away, so it goes in the query instead."""
    if account_id.strip(".") == "":
        return f"/{page}?" + urllib.parse.urlencode({"id": account_id})
    return f"/{page}/" + urllib.parse.quote(account_id, safe="")


def _account_id(request: Request) -> str:
    found = request.path_params.get("account_id")
    if found is None:
        found = request.query_params.get("id")
    if not found:
        raise Refused(404, "No such account", "The address names no account; open one from "
                      "the portfolio.")
    return found


def _contacts(conn: sa.Connection, account_id: str) -> list[dict[str, Any]]:
    """The account's people: its members' traits, latest membership first, and the handoff's
    stakeholders are shown beside them by the page."""
    from firstvalue.store.traits import plain_traits

    rows = conn.execute(sa.text(
        "SELECT m.user_id, MAX(m.ts) AS ts, c.traits FROM memberships m LEFT JOIN contacts c "
        "ON c.user_id = m.user_id WHERE m.account_id = :a GROUP BY m.user_id, c.traits "
        "ORDER BY MAX(m.ts) DESC LIMIT 100"), {"a": account_id}).all()
    people = []
    for user_id, _, traits in rows:
        plain = plain_traits(msgspec.json.decode(traits)) if traits else {}
        people.append({"user_id": user_id, "name": _text(plain.get("name")),
                       "email": _text(plain.get("email")),
                       "role": _text(plain.get("role") or plain.get("persona")),
                       "title": _text(plain.get("title"))})
    return people


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def work_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    now = d.now
    rows = {row.id: row for row in d.portfolio.rows()}
    owner = request.query_params.get("owner")
    if owner is None:
        owner = user.team_handle or ""
    with d.database.engine.connect() as conn:
        roster = dict(conn.execute(sa.text("SELECT handle, email FROM team_members")).all())
        task_rows = conn.execute(sa.text(
            "SELECT key, account_id, rule, recipient, assignee, sent_at, reason, "
            "snoozed_until, resolved_at FROM actions WHERE kind = 'task' AND status = 'sent' "
            "AND done_at IS NULL ORDER BY sent_at, key")).all()
    # Everyone with a queue: the roster (team leads and managers own no account, but get
    # tasks) and the accounts' owners.
    owners = sorted({*roster, *(row.owner for row in rows.values() if row.owner)})
    # An owner set by the CRM may be an address: a member's, or someone's not on the roster.
    email = (roster.get(owner) or (owner if "@" in owner else None)) if owner else None
    handles = {address.lower(): handle for handle, address in roster.items()}
    names = {owner.lower(), (email or owner).lower(),
             handles.get((email or "").lower(), owner).lower()}
    mine = {i for i, row in rows.items() if not owner or (row.owner or "").lower() in names}
    tasks, snoozed, cleared = [], 0, 0
    for task in task_rows:
        if owner and not _task_is_theirs(task, mine, email):
            continue
        if task.resolved_at is not None:
            cleared += 1  # its condition cleared: nothing is left for a person to do
            continue
        if task.snoozed_until is not None and task.snoozed_until > now:
            snoozed += 1
            continue
        tasks.append(task)
    tasks.sort(key=lambda t: (t.account_id not in rows, rows[t.account_id].risk_key
                              if t.account_id in rows else (), t.sent_at or 0, t.key))
    stalled = sorted((row for i, row in rows.items() if i in mine and row.stall is not None
                      and row.status == "onboarding"), key=lambda r: r.risk_key)
    total = len(tasks)
    pages = max(1, -(-total // WORK_PAGE))
    try:
        page = min(max(1, int(request.query_params.get("page") or 1)), pages)
    except ValueError:
        raise Refused(400, "Unknown page", f"page={request.query_params.get('page')!r} must "
                      "be a whole number from 1.") from None
    tasks = tasks[(page - 1) * WORK_PAGE:page * WORK_PAGE]
    stalled_total = len(stalled)
    stalled = stalled[:WORK_PAGE]
    known = owner in owners or owner == "" or email is not None
    base = "/work?" + urllib.parse.urlencode({"owner": owner})
    return d.render(request, "work.html", user, owner=owner, owners=owners, tasks=tasks,
                    task_total=total, page=page, pages=pages, base=base, known_owner=known,
                    stalled_total=stalled_total,
                    snoozed_count=snoozed, cleared_count=cleared, stalled=stalled, rows=rows,
                    now=now, assigned_to=_assigned_to(handles),
                    snooze_days=SNOOZE_DAYS,
                    notice=NOTICES.get(request.query_params.get("done", "")),
                    back=request.url.path + (f"?{request.url.query}" if request.url.query
                                             else ""))


def _task_is_theirs(task: Any, accounts: set[str], email: str | None) -> bool:
    """A task is a member's when it is for the owner of one of their accounts (whatever
    address it went to: the owner or their address may have changed since), or when it went
    to their address. A task for the account's AE or manager is theirs, not the owner's."""
    if task.recipient == "owner" and task.account_id in accounts:
        return True
    return (task.assignee is not None and email is not None
            and task.assignee.lower() == email.lower())


def _assigned_to(handles: dict[str, str]) -> Callable[[Any], str]:
    """Who a task went to, as the work queue names them: the team member's handle, else the
    address, else the role it was for."""
    def name(task: Any) -> str:
        if task.assignee is None:
            return f"{task.recipient} (no address yet)"
        return handles.get(task.assignee.lower(), task.assignee)
    return name


def funnel_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    from firstvalue.metrics.charts import cohort_chart, funnel_chart, survival_chart

    report = d.report()
    charts = []
    if report["ttv"]:
        charts.append(("ttv", "Time-to-value by segment (Kaplan-Meier)",
                       survival_chart(report).to_dict(), _ttv_summary(report)))
    if report["funnel"]["milestones"]:
        charts.append(("funnel", "Milestone funnel", funnel_chart(report).to_dict(),
                       "Eligible, reached and on-time runs per milestone; the table below "
                       "has the same figures."))
    if report.get("cohort_heatmap"):
        charts.append(("cohorts", "Retention and milestones by cohort",
                       cohort_chart(report).to_dict(), "Share of each monthly cohort that "
                       "reached each milestone, and its 90-day retention."))
    return d.render(request, "funnel.html", user, report=report, chart_list=charts,
                    charts=True)


def _ttv_summary(report: dict[str, Any]) -> str:
    parts = [f"{g['group']}: median {g['median_days']} days" if g["median_days"] is not None
             else f"{g['group']}: median not reached" for g in report["ttv"]]
    return "Share of runs not at first value yet, by day since contract. " + "; ".join(parts)


def playbook_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    from firstvalue.errors import PlaybookError
    from firstvalue.playbook.loader import parse_playbook

    loaded = d.context.playbook.loaded
    with d.database.engine.connect() as conn:
        versions = conn.execute(sa.text(
            "SELECT version, text, first_used_at FROM playbook_versions "
            "ORDER BY first_used_at DESC, version")).all()
    checked = []
    for row in versions:
        # A version names its text's hash, so its check never changes: done once a process.
        problems = d.version_problems.get(row.version)
        if problems is None:
            try:
                parse_playbook(row.text, row.version)
                problems = []
            except PlaybookError as exc:
                problems = [p.as_dict() for p in exc.problems]
            d.version_problems[row.version] = problems
        checked.append({"version": row.version, "first_used_at": isoformat(row.first_used_at),
                        "active": row.version == loaded.version, "problems": problems})
    model = loaded.model
    return d.render(request, "playbook.html", user, loaded=loaded, model=model,
                    versions=checked)


def deliveries_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    from firstvalue.actions.outbox import action_json
    from firstvalue.crm.sync import list_rows, sync_status

    with d.database.engine.connect() as conn:
        counts = dict(conn.execute(sa.text(
            "SELECT status, COUNT(*) FROM actions WHERE status IN ('pending', 'failed', "
            "'dead') GROUP BY status")).all())
        rows = [{**action_json(dict(r._mapping)), "waits_until": r.next_attempt_at}
                for r in conn.execute(sa.text(
            "SELECT * FROM actions WHERE status IN ('pending', 'failed', 'dead') "
            "ORDER BY CASE status WHEN 'dead' THEN 0 WHEN 'failed' THEN 1 ELSE 2 END, "
            "due_at, key LIMIT 200"))]
        disabled = conn.execute(sa.text(
            "SELECT name, disabled_at, reason FROM endpoints WHERE disabled_at IS NOT NULL "
            "ORDER BY name")).all()
    names = {r.id: r.name for r in d.portfolio.rows()}
    return d.render(request, "deliveries.html", user, counts=counts, actions=rows, names=names,
                    now=d.now,
                    crm_rows=list_rows(d.database), crm_status=sync_status(d.database),
                    disabled=disabled, notice=NOTICES.get(request.query_params.get("done", "")))


def retry_delivery(d: Dashboard, request: Request, user: WebUser,
                   fields: dict[str, str]) -> Response:
    from firstvalue.actions.outbox import replay
    from firstvalue.crm.sync import retry_rows

    now = d.now
    if fields.get("action"):
        with d.database.write() as conn:
            changed = replay(conn, [fields["action"]], None, now)
    elif fields.get("record") and fields.get("connector"):
        changed = retry_rows(d.database, now, fields["connector"], [fields["record"]])
    else:
        raise Refused(400, "Nothing to retry", "The form names no action or CRM record; "
                      "use a Retry button on the deliveries page.")
    if not changed:
        raise Refused(409, "Not retried", "That delivery is no longer failed or dead (it may "
                      "have been retried already); reload the deliveries page.")
    raise Redirect("/deliveries?done=retried")


def send_action(d: Dashboard, request: Request, user: WebUser,
                fields: dict[str, str]) -> Response:
    key = _key(fields)
    with d.database.write() as conn:
        changed = conn.execute(sa.text(
            # The reason notes the first release only: a reason must not grow with each one.
            "UPDATE actions SET next_attempt_at = :now, reason = CASE WHEN changed_by IS NULL "
            "THEN reason || :note ELSE reason END, changed_by = :u WHERE key = :k AND status "
            "IN ('pending', 'failed') AND next_attempt_at > :now"),
            {"now": d.now, "u": user.name, "k": key,
             "note": f"; released early from the dashboard by {user.name}"}).rowcount
        if not changed:
            due = conn.execute(sa.text(
                "SELECT 1 FROM actions WHERE key = :k AND status IN ('pending', 'failed')"),
                {"k": key}).first()
            if due:
                raise Refused(409, "Already due", "That action is due already: the dispatcher "
                              "takes it on its next round. Reload the page to see it sent.")
    return _back(d, fields, key, changed, "sent")


def cancel_action(d: Dashboard, request: Request, user: WebUser,
                  fields: dict[str, str]) -> Response:
    key = _key(fields)
    with d.database.write() as conn:
        changed = conn.execute(sa.text(
            "UPDATE actions SET status = 'cancelled', resolved_at = :now, next_attempt_at = "
            "NULL, changed_by = :u, reason = :prefix || reason WHERE key = :k "
            "AND status IN ('pending', 'failed')"),
            {"now": d.now, "u": user.name, "k": key,
             "prefix": f"cancelled from the dashboard by {user.name}; it was: "}).rowcount
    return _back(d, fields, key, changed, "cancelled")


def complete_task(d: Dashboard, request: Request, user: WebUser,
                  fields: dict[str, str]) -> Response:
    from firstvalue.actions.outbox import complete_task as complete

    key = _key(fields)
    with d.database.write() as conn:
        changed = complete(conn, key, d.now, by=user.name)
    return _back(d, fields, key, changed, "task_done")


def snooze_task(d: Dashboard, request: Request, user: WebUser,
                fields: dict[str, str]) -> Response:
    key = _key(fields)
    try:
        days = int(fields.get("days", "1"))
    except ValueError:
        days = 0
    if days not in SNOOZE_DAYS:
        raise Refused(400, "Unknown snooze", f"days={fields.get('days')!r}: snooze for "
                      f"{', '.join(map(str, SNOOZE_DAYS))} days.")
    with d.database.write() as conn:
        changed = conn.execute(sa.text(
            "UPDATE actions SET snoozed_until = :until, changed_by = :u WHERE key = :k "
            "AND kind = 'task' AND status = 'sent' AND done_at IS NULL"),
            {"until": d.now + days * DAY, "u": user.name, "k": key}).rowcount
    return _back(d, fields, key, changed, "task_snoozed")


def _key(fields: dict[str, str]) -> str:
    key = fields.get("key", "")
    if not key or len(key) > 1000:
        raise Refused(400, "No action named", "The form names no action; use the buttons "
                      "on the account or work page.")
    return key


def _back(d: Dashboard, fields: dict[str, str], key: str, changed: int, done: str) -> Response:
    from firstvalue.web.pages import _safe_next

    back = _safe_next(fields.get("back"))
    if not changed:
        raise Refused(409, "Nothing changed", "That action or task is not open any more (it "
                      "may have been sent, done or cancelled meanwhile): the page you came from "
                      "shows it as it is now.", back)
    raise Redirect(_with_notice(back, done))


def _with_notice(path: str, done: str) -> str:
    """`path` with `done=` naming the notice to show, in place of the one it may have had, so
    that one click after another does not pile them up."""
    parts = urllib.parse.urlsplit(path)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k != "done"]
    query.append(("done", done))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# --- the handoff form --------------------------------------------------------------------

def handoff_page(d: Dashboard, request: Request, user: WebUser, _: Any) -> Response:
    from firstvalue.errors import UnknownAccount
    from firstvalue.runtime.handoff import handoff_json

    account_id = _account_id(request)
    settings = d.context.playbook.loaded.model.handoff
    with d.database.engine.connect() as conn:
        try:
            stored = handoff_json(conn, settings, account_id)
        except UnknownAccount:
            raise Refused(404, "No such account", f"There is no account {account_id!r}; a "
                          "handoff is for an account the store holds.") from None
    values = {f.key: _as_text(f.kind, stored["record"].get(f.key)) for f in settings.fields}
    return _handoff_form(d, request, user, account_id, stored, values, {})


def handoff_post(d: Dashboard, request: Request, user: WebUser,
                 fields: dict[str, str]) -> Response:
    from firstvalue.engine.handoff import HandoffError
    from firstvalue.errors import UnknownAccount
    from firstvalue.runtime.handoff import handoff_json, submit_handoff

    account_id = _account_id(request)
    settings = d.context.playbook.loaded.model.handoff
    with d.database.engine.connect() as conn:
        try:
            stored = handoff_json(conn, settings, account_id)
        except UnknownAccount:
            raise Refused(404, "No such account", f"There is no account {account_id!r}."
                          ) from None
    before = stored["record"]
    values = {f.key: fields.get(f"field_{f.key}", "") for f in settings.fields}
    submitted, errors = {}, {}
    for field in settings.fields:
        parsed, why = _parse_field(field.kind, values[field.key])
        if why:
            errors[field.key] = why
        elif field.kind == "people" and parsed:
            submitted[field.key] = _keep_titles(parsed, before.get(field.key))
        else:
            submitted[field.key] = parsed
    incomplete = fields.get("intent") == "save_incomplete"
    if not incomplete:
        for field in settings.fields:
            if field.required and field.key not in errors and _blank(submitted[field.key]):
                errors[field.key] = ("This field is required for the handoff to be complete. "
                                     "Fill it in, or save the handoff as incomplete.")
    if not errors:
        try:
            with d.database.write() as conn:
                result = submit_handoff(conn, settings, account_id, submitted, d.now,
                                        f"dashboard:{user.name}")
        except UnknownAccount:
            raise Refused(404, "No such account", f"There is no account {account_id!r}."
                          ) from None
        except HandoffError as exc:
            errors = {name: why for name, why in exc.problems}
        else:
            done = "handoff_saved" if result["complete"] else "handoff_incomplete"
            raise Redirect(_with_notice(account_path(account_id), done))
    # Nothing was stored (a refused submission rolls back): the record read above stands.
    return _handoff_form(d, request, user, account_id, stored, values, errors, status=400)


def _handoff_form(d: Dashboard, request: Request, user: WebUser, account_id: str,
                  stored: dict[str, Any], values: dict[str, str], errors: dict[str, str],
                  status: int = 200) -> Response:
    settings = d.context.playbook.loaded.model.handoff
    row = d.portfolio.get(account_id)
    return d.render(request, "handoff.html", user, status=status, account_id=account_id,
                    account_name=row.name if row else account_id, fields=settings.fields,
                    stored=stored, values=values, errors=errors, hints=HINTS,
                    path_use_cases=[use_case for path in d.context.playbook.loaded.model.paths
                                    for use_case in path.use_case])


HINTS = {
    "text": "Text.",
    "list": "One entry per line.",
    "people": "One person per line: Name (role) <email>; the email is optional.",
    "object": "One `key: value` per line (for example `crm: salesforce`), or a JSON object.",
}


def _blank(value: Any) -> bool:
    return value in (None, "", [], {})


def _parse_field(kind: str, text: str) -> tuple[Any, str | None]:
    """A form field's text as its kind's value, or why it does not read as one."""
    from firstvalue.engine.handoff import parse_person

    text = text.strip()  # the form's NUL characters are gone already (Dashboard.form)
    if kind == "text" or not text:
        return text, None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if kind == "list":
        return lines, None
    if kind == "people":
        people = []
        for number, line in enumerate(lines, start=1):
            person = parse_person(line)
            if person is None:
                return None, (f"line {number} ({line[:60]!r}) does not read as "
                              "Name (role) <email>; write e.g. Dana Reyes (champion) "
                              "<dana@example.com>")
            people.append(person)
        return people, None
    if text.startswith("{"):
        try:
            value = msgspec.json.decode(text)
        except (msgspec.DecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            return None, f"not valid JSON ({why}); write one key: value per line instead"
        if holds_nul(value):
            return None, "a NUL character (\\u0000) is not allowed"
        return value, None
    found_object: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        key, colon, value = line.partition(":")
        if not colon or not key.strip():
            return None, (f"line {number} ({line[:60]!r}) has no `key: value`; write e.g. "
                          "crm: salesforce")
        found_object[key.strip()] = value.strip()
    return found_object, None


def _keep_titles(parsed: list[dict[str, str]], stored: Any) -> list[dict[str, str]]:
    """The form has no place for a stakeholder's title: keep the one stored for that name."""
    titles = {p.get("name"): p["title"] for p in stored or [] if isinstance(p, dict)
              and isinstance(p.get("title"), str)}
    return [{**person, "title": titles[person["name"]]} if person["name"] in titles
            and "title" not in person else person for person in parsed]


def _as_text(kind: str, value: Any) -> str:
    if value in (None, "", [], {}):
        return ""
    if kind == "list":
        return "\n".join(str(v) for v in value)
    if kind == "people":
        return "\n".join(f"{p.get('name', '')} ({p.get('role', '')})"
                         + (f" <{p['email']}>" if p.get("email") else "") for p in value)
    if kind == "object":
        if all(isinstance(v, str | int | float | bool) for v in value.values()):
            return "\n".join(f"{k}: {v}" for k, v in value.items())
        return msgspec.json.encode(value).decode()
    return str(value)
