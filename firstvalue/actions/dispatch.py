"""The dispatcher: claims due actions from the outbox and delivers them, at least once.

A row is claimed by pushing its next attempt a lease into the future and committing, then
delivered, then marked sent. A dispatcher that dies between delivery and marking leaves the row
to come back when the lease runs out, and the next delivery carries the same Message-ID or
`webhook-id`: that lease (LEASE_SECONDS) is the window in which a crash causes a second
delivery, which the receiver can recognise and drop.
"""

from __future__ import annotations

import logging
import math
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.actions import channels
from firstvalue.actions.channels import DeliveryError, Outgoing
from firstvalue.actions.outbox import actions_by_account
from firstvalue.actions.templates import TemplateRenderError, render
from firstvalue.clock import isoformat
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.days import start_of_local_day, zone
from firstvalue.engine.rules import next_window_opening, window_opening
from firstvalue.runtime.handoff import load_handoffs
from firstvalue.runtime.routing import load_team, stand_in
from firstvalue.settings import get_int_setting, get_setting
from firstvalue.store.database import Database
from firstvalue.store.traits import plain_traits

log = logging.getLogger(__name__)

SECOND = 1_000_000
# A claimed batch must be delivered within the lease, or another dispatcher may take it:
# BATCH rows at the channels' 15 s timeout stay well inside it.
LEASE_SECONDS = 600
LATE_AFTER = 15 * 60 * SECOND
CUSTOMER_FACING = ("champion", "actor", None)
ADDRESS_SOURCES = {"owner": "the account's `owner_email` or `owner` trait (set by routing "
                            "from the roster), or FIRSTVALUE_TEAM_QUEUE while the owner is away "
                            "or for a self-serve account",
                   "manager": "the account's `manager` trait or FIRSTVALUE_TEAM_LEAD",
                   "team_lead": "FIRSTVALUE_TEAM_LEAD or the roster's team lead",
                   "ae": "the account's `ae_email` or `ae` trait"}
BATCH = 20
_decode = msgspec.json.decode


@dataclass
class DispatchResult:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    dead: int = 0
    keys: list[str] = field(default_factory=list)


Deliver = Callable[[Outgoing], None]


def default_channels() -> dict[str, Deliver]:
    return {"email": channels.send_email, "slack": channels.send_slack,
            "webhook": channels.send_webhook}


def sandbox_channels(log_to: list[Outgoing]) -> dict[str, Deliver]:
    """Deliveries that go nowhere but a list: what `firstvalue demo` uses."""
    return {kind: log_to.append for kind in ("email", "slack", "webhook")}


class Dispatcher:
    def __init__(self, database: Database, playbook: CompiledPlaybook,
                 deliver: dict[str, Deliver] | None = None,
                 slack_is_set_up: Callable[[], bool] = channels.slack_is_set_up) -> None:
        self.database = database
        self.playbook = playbook
        self.deliver = deliver or default_channels()
        self.slack_is_set_up = slack_is_set_up
        self._disabled: dict[str, str] = {}
        self._contexts: dict[str, dict[str, Any]] = {}
        self._team: dict[str, Any] = {}  # the roster, read once a batch

    def run_once(self, now: int) -> DispatchResult:
        """Deliver every action due at `now`, in batches, until none is left."""
        result = DispatchResult()
        while True:
            claimed = self._claim(now)
            if not claimed:
                return result
            # Read once a batch, not once an action: which endpoints are disabled, and the
            # context of each account (several of its actions often fall due together).
            self._disabled = self._disabled_endpoints()
            self._contexts = {}
            with self.database.engine.connect() as conn:
                self._team = {m.handle: m for m in load_team(conn)}
            for row in claimed:
                try:
                    self._dispatch(row, now, result)
                except Exception as exc:  # one action must never stop the others
                    log.exception("Action %s failed unexpectedly; it is parked as dead.",
                                  row["key"])
                    self._park(row, f"unexpected error: {type(exc).__name__}: {exc}", now)
                    result.dead += 1

    def _claim(self, now: int) -> list[dict[str, Any]]:
        with self.database.engine.connect() as conn:
            # A read first: most runs find nothing due, and need not take the write lock.
            anything = conn.execute(sa.text(
                "SELECT 1 FROM actions WHERE status IN ('pending', 'failed') "
                "AND next_attempt_at <= :now LIMIT 1"), {"now": now}).first()
        if anything is None:
            return []
        lock = "" if self.database.is_sqlite else " FOR UPDATE SKIP LOCKED"
        with self.database.write() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT * FROM actions WHERE status IN ('pending', 'failed') "
                f"AND next_attempt_at <= :now ORDER BY next_attempt_at, id LIMIT {BATCH}{lock}"),
                {"now": now})]
            lease = now + LEASE_SECONDS * SECOND
            if rows:
                conn.execute(sa.text("UPDATE actions SET next_attempt_at = :lease WHERE id = :id"),
                             [{"id": r["id"], "lease": lease} for r in rows])
        for row in rows:
            row["lease"] = lease
        return rows

    def _dispatch(self, row: dict[str, Any], now: int, result: DispatchResult) -> None:
        context = self._contexts.get(row["account_id"])
        if context is None:
            context = self._contexts[row["account_id"]] = _load_context(
                self.database, row["account_id"], now, self._team)
        tz = zone(context["timezone"]) or zoneinfo.ZoneInfo("UTC")
        kind = row["kind"]
        if kind == "slack" and not self.slack_is_set_up():
            kind = "email"  # the owner's alert goes by email where Slack is not set up

        wait_until = self._wait_until(row, kind, context, tz, now)
        if wait_until is not None:
            self._update(row, status="pending", not_before=wait_until, next_attempt_at=wait_until)
            result.deferred += 1
            return

        try:
            outgoing = self._render(row, kind, context)
            if kind in self.deliver:
                self._check_endpoint(kind)
                self.deliver[kind](outgoing)
        except TemplateRenderError as exc:
            self._park(row, f"template {row['template']!r} cannot be rendered: {exc}", now)
            result.dead += 1
            return
        except DeliveryError as exc:
            if row["kind"] == "slack" and kind == "email" and exc.unset:
                # The alert fell back to email: name both settings that would send it.
                exc = DeliveryError(f"no Slack webhook is set (FIRSTVALUE_SLACK_WEBHOOK_URL), "
                                    f"so it goes by email, and {exc}", exc.retry_after,
                                    exc.gone, exc.unset)
            self._failed(row, kind, exc, now, result)
            return

        late = now - max(row["not_before"], row["due_at"]) > LATE_AFTER
        # The contact it went to is kept: the daily cap counts per contact.
        contact = _recipient_id(row, context) if row["recipient"] in CUSTOMER_FACING \
            else row["contact"]
        self._update(row, status="sent", sent_at=now, late=int(late), error=None,
                     contact=contact, assignee=None if row["recipient"] in CUSTOMER_FACING
                     else outgoing.address,
                     next_attempt_at=None, subject=outgoing.subject, body=outgoing.body,
                     attempts=row["attempts"] + 1)
        log.info("Action %s was delivered (%s).", row["key"], kind)
        result.sent += 1
        result.keys.append(row["key"])

    def _wait_until(self, row: dict[str, Any], kind: str, context: dict[str, Any],
                    tz: zoneinfo.ZoneInfo, now: int) -> int | None:
        """For a message to a customer: the window's next opening, or the next day's when the
        contact already had the day's cap. None when it may go now."""
        if kind not in ("email", "in_app") or row["recipient"] not in CUSTOMER_FACING:
            return None
        model = self.playbook.loaded.model
        opening = next_window_opening(now, tz, model.send_window)
        if opening > now:
            return opening
        contact = _recipient_id(row, context)
        day = datetime.fromtimestamp(now // SECOND, tz).date()
        start = start_of_local_day(day, tz)
        with self.database.engine.connect() as conn:
            sent_today = conn.execute(sa.text(
                f"SELECT COUNT(*) FROM {actions_by_account(conn)} WHERE contact = :c "
                "AND kind IN ('email', 'in_app') AND status = 'sent' AND sent_at >= :start "
                "AND account_id = :a"),
                {"c": contact, "start": start, "a": row["account_id"]}).scalar()
        if sent_today >= model.daily_cap:
            return window_opening(day + timedelta(days=1), tz, model.send_window)
        return None

    def _render(self, row: dict[str, Any], kind: str, context: dict[str, Any]) -> Outgoing:
        use_case = (context.get("handoff") or {}).get("use_case") or \
            context["traits"].get("use_case")
        track = self.playbook.on_path(self.playbook.choose_track(context["traits"]), use_case)
        templates = track.templates if track else self.playbook.loaded.model.templates
        template = templates.get(row["template"] or "")
        variables = _variables(row, context, track.track.kickoff if track else True)
        subject = render(template.subject, variables) if template and template.subject else None
        # An internal alert without a template of its own (routing's) says why it was sent.
        body = render(template.body, variables) if template else (
            row["reason"] if row["recipient"] == "team_lead" else "")
        # PostgreSQL text holds no NUL, and a header no line break: neither may come from data.
        body = body.replace("\x00", "")
        if subject is not None:
            subject = " ".join(subject.replace("\x00", "").split())
        address = _address(row, context)
        payload = {"key": row["key"], "account_id": row["account_id"], "rule": row["rule"],
                   "kind": row["kind"], "due_at": isoformat(row["due_at"]), "subject": subject,
                   "body": body, "reason": row["reason"]}
        internal = row["recipient"] in ("owner", "manager", "ae", "team_lead") \
            or row["kind"] == "slack"
        source = ADDRESS_SOURCES.get("owner" if row["kind"] == "slack" else row["recipient"],
                                     "the contact's `email` trait")
        return Outgoing(row["key"], kind, address, subject, body, payload, internal, source)

    def _disabled_endpoints(self) -> dict[str, str]:
        with self.database.engine.connect() as conn:
            return dict(conn.execute(sa.text(
                "SELECT name, reason FROM endpoints WHERE disabled_at IS NOT NULL")).all())

    def _check_endpoint(self, kind: str) -> None:
        disabled = self._disabled.get(kind)
        if disabled:
            raise DeliveryError(f"the {kind} endpoint is disabled ({disabled}); re-enable it "
                                f"with `firstvalue actions retry --endpoint {kind}`", gone=True)

    def _failed(self, row: dict[str, Any], kind: str, exc: DeliveryError, now: int,
                result: DispatchResult) -> None:
        if exc.unset:
            # Not configured yet: wait for it, without using up the action's attempts.
            self._update(row, status="pending", error=str(exc),
                         next_attempt_at=now + int((exc.retry_after or 3600) * SECOND))
            result.deferred += 1
            _warn_once(f"The {kind} channel is not set up ({exc}): its actions stay pending, "
                       "without using up attempts, until it is.")
            return
        attempts = row["attempts"] + 1
        if exc.gone:
            if kind in ("slack", "webhook") and "disabled" not in str(exc):
                self._disable_endpoint(kind, str(exc), now)
            self._park(row, str(exc), now, attempts)
            result.dead += 1
            return
        if attempts >= get_int_setting("max_attempts"):
            self._park(row, f"gave up after {attempts} attempts: {exc}", now, attempts)
            result.dead += 1
            return
        longest = 6 * 3600 * SECOND
        backoff = min(30 * SECOND * 2 ** (attempts - 1), longest)
        if exc.retry_after is not None and math.isfinite(exc.retry_after):
            backoff = max(backoff, int(min(exc.retry_after, longest / SECOND) * SECOND))
        elif exc.retry_after is not None:
            backoff = longest  # "Retry-After: inf": as long as firstvalue ever waits
        self._update(row, status="failed", attempts=attempts, error=str(exc),
                     next_attempt_at=now + backoff)
        log.warning("Action %s could not be delivered (%s); attempt %d, will retry.",
                    row["key"], exc, attempts)
        result.failed += 1

    def _park(self, row: dict[str, Any], reason: str, now: int,
              attempts: int | None = None) -> None:
        self._update(row, status="dead", error=reason, next_attempt_at=None,
                     attempts=attempts if attempts is not None else row["attempts"] + 1)
        log.warning("Action %s is parked as dead: %s", row["key"], reason)

    def _disable_endpoint(self, kind: str, reason: str, now: int) -> None:
        self._disabled[kind] = reason
        with self.database.write() as conn:
            conn.execute(sa.text(
                "INSERT INTO endpoints (name, disabled_at, reason) VALUES (:n, :at, :r) "
                "ON CONFLICT (name) DO UPDATE SET disabled_at = :at, reason = :r"),
                {"n": kind, "at": now, "r": reason})

    def _update(self, row: dict[str, Any], **changes: Any) -> None:
        """Record an outcome, only while this dispatcher still holds the row's claim: a slow
        delivery whose lease ran out must not overwrite what another dispatcher recorded."""
        assignments = ", ".join(f"{column} = :{column}" for column in changes)
        with self.database.write() as conn:
            updated = conn.execute(sa.text(
                f"UPDATE actions SET {assignments} WHERE id = :id AND next_attempt_at = :lease "
                "AND status IN ('pending', 'failed')"),
                {**changes, "id": row["id"], "lease": row["lease"]}).rowcount
        if not updated:
            log.warning("Action %s was taken over by another dispatcher while this one worked "
                        "on it; its outcome here is not recorded.", row["key"])


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A missing setting is said once a process, not once an action."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def _load_context(database: Database, account_id: str, now: int,
                  team: dict[str, Any] | None = None) -> dict[str, Any]:
    with database.engine.connect() as conn:
        account = conn.execute(sa.text("SELECT traits, state FROM accounts WHERE id = :a"),
                               {"a": account_id}).one()
        contacts = conn.execute(sa.text(
            "SELECT DISTINCT c.user_id, c.traits FROM memberships m JOIN contacts c "
            "ON c.user_id = m.user_id WHERE m.account_id = :a ORDER BY c.user_id"),
            {"a": account_id}).all()
        assignment = conn.execute(sa.text(
            "SELECT status FROM assignments WHERE account_id = :a"), {"a": account_id}).scalar()
        if team is None:
            team = {m.handle: m for m in load_team(conn)}
        handoff = load_handoffs(conn, [account_id]).get(account_id)
    traits = plain_traits(_decode(account[0]))
    state = _decode(account[1]) if account[1] else {}
    return {"id": account_id, "traits": traits, "state": state,
            "timezone": state.get("timezone") or traits.get("timezone") or "UTC",
            "contacts": {user: plain_traits(_decode(t)) for user, t in contacts},
            "owner_address": _owner_address(traits, team, assignment, now),
            "team_lead": get_setting("team_lead") or next(
                (m.email for m in team.values() if m.role == "team_lead"), None),
            "handoff": handoff["record"] if handoff else None}


def _owner_address(traits: dict[str, Any], team: dict[str, Any], assignment: str | None,
                   now: int) -> str | None:
    """Where the owner's tasks and alerts go now: the owner; their cover, or the team queue,
    while they are away; the team queue for a self-serve account, which has no owner."""
    owner = traits.get("owner_email") or traits.get("owner")
    member = team.get(str(traits.get("owner"))) or next(
        (m for m in team.values() if isinstance(owner, str)
         and m.email.lower() == owner.strip().lower()), None)
    if member is not None and member.is_away(now):
        cover = stand_in(team, member, now)
        return cover.email if cover is not None else get_setting("team_queue")
    if owner is None and assignment == "self_serve":
        return get_setting("team_queue")
    if member is not None:
        return member.email
    return owner if isinstance(owner, str) and "@" in owner else None


def _recipient_id(row: dict[str, Any], context: dict[str, Any]) -> str | None:
    if row["recipient"] == "actor" and row["contact"]:
        return row["contact"]
    contacts = context["contacts"]
    champions = [user for user, traits in contacts.items() if traits.get("role") == "champion"]
    return (champions or list(contacts) or [None])[0]


def _address(row: dict[str, Any], context: dict[str, Any]) -> str | None:
    traits = context["traits"]
    recipient = row["recipient"]
    if recipient == "owner" or row["kind"] == "slack":
        return context["owner_address"]
    if recipient == "manager":
        return traits.get("manager") or context["team_lead"]
    if recipient == "team_lead":
        return context["team_lead"]
    if recipient in ("queue", "account"):
        return None  # no one's inbox: such actions are tasks and flags, not emails
    if recipient == "ae":
        ae = traits.get("ae_email") or traits.get("ae")
        return ae if isinstance(ae, str) and "@" in ae else None
    contact = context["contacts"].get(_recipient_id(row, context) or "", {})
    email = contact.get("email")
    return email if isinstance(email, str) else None


def _variables(row: dict[str, Any], context: dict[str, Any],
               track_has_kickoff: bool) -> dict[str, Any]:
    traits = context["traits"]
    state = context["state"]
    contact_id = _recipient_id(row, context)
    contact = {"id": contact_id, **context["contacts"].get(contact_id or "", {})}
    owner = traits.get("owner")
    # The handoff record's fields, else what a closed-won webhook left as the `handoff` trait.
    handoff = context.get("handoff") or (traits.get("handoff")
                                         if isinstance(traits.get("handoff"), dict) else {})
    run = {"number": row["run"], "day": state.get("day"), "ttv_days": state.get("ttv_days"),
           "kickoff": track_has_kickoff,
           "started_at": (state.get("run") or {}).get("started_at")}
    milestone = next((m for m in state.get("milestones", [])
                      if m.get("key") == state.get("current_milestone")), {})
    facts = _decode(row["facts"]) if row.get("facts") else {}
    people = [{"id": user, **person} for user, person in context["contacts"].items()]
    return {"account": {"id": context["id"], **traits}, "contact": contact,
            "contacts": people, "stall": facts.get("stall", {}),
            "owner": {"name": owner, "email": owner if isinstance(owner, str) and "@" in owner
                      else None},
            "run": run, "milestone": milestone, "handoff": handoff}
