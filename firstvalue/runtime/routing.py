"""Routing new accounts to an owner by tier, and the team roster it draws on.

The playbook's tier rules give an account its tier and its `ownership` the tier's model. The
tick routes every account that has no assignment yet, and retries those waiting for capacity,
oldest first. An assigned owner becomes the account's `owner` and `owner_email` traits (with
their own history, like any trait), so rules, tasks and alerts address them as usual. An
account whose `owner` trait was set by another system (a CRM) keeps it: that owner is recorded
and counts towards their load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.engine.routing import Choice, Member, choose_owner
from firstvalue.errors import ConfigError
from firstvalue.store import events as event_store
from firstvalue.store.traits import merge_traits, plain_traits

log = logging.getLogger(__name__)

_decode = msgspec.json.decode
_encode = msgspec.json.encode
ROLES = ("csm", "implementation_manager", "team_lead")
MAX_CAPACITY = 100_000
HANDLE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def load_team(conn: sa.Connection) -> list[Member]:
    """The roster, each member with their load: the accounts assigned to them whose run has
    not ended."""
    loads = dict(conn.execute(sa.text(
        "SELECT owner, COUNT(*) FROM assignments WHERE owner IS NOT NULL AND status = "
        "'assigned' AND released_at IS NULL GROUP BY owner")).all())
    rows = conn.execute(sa.text("SELECT * FROM team_members ORDER BY handle")).all()
    return [Member(r.handle, r.email, r.role, r.capacity, r.timezone, r.away_from,
                   r.away_until, r.cover, r.last_assigned_at, loads.get(r.handle, 0))
            for r in rows]


def routing_candidates(conn: sa.Connection, playbook: CompiledPlaybook) -> list[str]:
    """The accounts a tick routes (when `routing_active`), in the order it routes them:
    those waiting for capacity, those without an assignment, and assigned ones that changed
    since their evaluation."""
    # While no member has room, routing a waiting account again changes nothing: only those
    # that changed are (a new tier, an `owner` set by the CRM). Routing all of them every
    # tick rewrote their rows for nothing, with their accounts locked (a review: 1,146
    # waiting accounts, 1.5 to 2.3 s a tick, ingest for them waiting as long).
    roles_with_room = {m.role for m in load_team(conn) if m.load < m.capacity}
    ownership = playbook.loaded.model.ownership
    waiting = [account for account, tier, changed in conn.execute(sa.text(
        "SELECT s.account_id, s.tier, a.change_seq > a.evaluated_seq FROM assignments s "
        "JOIN accounts a ON a.id = s.account_id WHERE s.status = 'waiting' "
        "ORDER BY s.waiting_since, s.account_id"))
        if changed or tier not in ownership
        or (ownership[tier].role or "csm") in roles_with_room]
    new = conn.execute(sa.text(
        "SELECT a.id FROM accounts a LEFT JOIN assignments s ON s.account_id = a.id "
        "WHERE s.account_id IS NULL ORDER BY a.created_at, a.id")).scalars().all()
    return [*waiting, *new, *changed_assigned(conn)]


def routing_active(conn: sa.Connection, playbook: CompiledPlaybook) -> bool:
    """Whether ticks route accounts: not while the playbook declares no `ownership` or the
    roster is empty (a team that has not set up its roster is not routing yet)."""
    return bool(playbook.loaded.model.ownership) and bool(
        conn.execute(sa.text("SELECT COUNT(*) FROM team_members")).scalar())


def changed_assigned(conn: sa.Connection) -> dict[str, int]:
    """Assigned accounts that changed since their last evaluation, with their change_seq, in
    id order: their `owner` trait may have been changed by another system, which then owns
    the account."""
    return dict(conn.execute(sa.text(  # type: ignore[arg-type]
        "SELECT a.id, a.change_seq FROM accounts a JOIN assignments s ON s.account_id = a.id "
        "WHERE s.status = 'assigned' AND a.change_seq > a.evaluated_seq ORDER BY a.id")).all())


def route_accounts(conn: sa.Connection, playbook: CompiledPlaybook, now: int,
                   candidates: list[str]) -> int:
    """Route these accounts (`routing_candidates`, in its order); the number assigned."""
    if not candidates:
        return 0
    team = {m.handle: m for m in load_team(conn)}
    recorded = {row.account_id: row for row in event_store.select_in(
        conn, "SELECT account_id, status, owner, waiting_since FROM assignments "
              "WHERE account_id IN :ids", candidates)}
    assigned = 0
    for account_id, traits_text in _traits_of(conn, candidates):
        stored = _decode(traits_text)
        traits = plain_traits(stored)
        outcome = _route_one(conn, playbook, account_id, stored, traits, team,
                             recorded.get(account_id), now)
        assigned += outcome == "assigned"
    return assigned


def _traits_of(conn: sa.Connection, ids: list[str]) -> list[tuple[str, str]]:
    order = {account_id: index for index, account_id in enumerate(ids)}
    rows = event_store.select_in(conn, "SELECT id, traits FROM accounts WHERE id IN :ids", ids)
    return sorted(((r[0], r[1]) for r in rows), key=lambda r: order[r[0]])


def _route_one(conn: sa.Connection, playbook: CompiledPlaybook, account_id: str,
               stored: dict[str, Any], traits: dict[str, Any], team: dict[str, Member],
               existing: Any, now: int) -> str:
    tier = playbook.choose_tier(traits)
    explicit = traits.get("owner")
    if existing is not None and existing.status == "assigned":
        member = _member_named(team, explicit) if explicit is not None else None
        owner = member.handle if member is not None else (str(explicit) if explicit else None)
        if owner is not None and owner != existing.owner:
            _record(conn, account_id, tier, "explicit", "assigned", owner, now, None,
                    "owner changed by the account's `owner` trait")
            _move_load(team, existing.owner, member)
        return "kept"
    if explicit is not None:
        # Set by someone else (a CRM), also while the account waited for capacity: it stands.
        member = _member_named(team, explicit)
        _record(conn, account_id, tier, "explicit", "assigned", member.handle if member else
                str(explicit), now, None, "owner set by the account's `owner` trait")
        _move_load(team, None, member)
        return "explicit"

    ownership = playbook.loaded.model.ownership.get(tier) if tier is not None else None
    if ownership is None:
        if existing is None:
            _record(conn, account_id, tier, "none", "unrouted", None, now, None,
                    f"no ownership model for tier {tier}; set the account's tier or the "
                    "playbook's `ownership`")
        return "unrouted"
    if ownership.model == "none":
        _record(conn, account_id, tier, "none", "self_serve", None, now, None,
                f"tier {tier} is self-serve: no owner; human escalations go to the team queue")
        return "self_serve"

    choice = choose_owner(list(team.values()), ownership.role or "csm",
                          traits.get("timezone") if isinstance(traits.get("timezone"), str)
                          else None, now)
    if choice.owner is None:
        since = existing.waiting_since if existing is not None and existing.waiting_since \
            else now
        _record(conn, account_id, tier, ownership.model, "waiting", None, now, since,
                f"waiting for capacity: {choice.reason}")
        _alert_team_lead(conn, playbook, account_id, tier, choice, since, now)
        return "waiting"
    _assign(conn, account_id, stored, tier, ownership.model, choice, now)
    team[choice.owner.handle] = _with_load(choice.owner, choice.owner.load + 1, now)
    return "assigned"


def _assign(conn: sa.Connection, account_id: str, stored: dict[str, Any], tier: int | None,
            model: str, choice: Choice, now: int) -> None:
    owner = choice.owner
    assert owner is not None
    merge_traits(stored, {"owner": owner.handle, "owner_email": owner.email}, now,
                 f"routing:{account_id}:{now}")
    conn.execute(sa.text("UPDATE accounts SET traits = :t WHERE id = :a"),
                 {"t": _encode(stored).decode(), "a": account_id})
    conn.execute(sa.text("UPDATE team_members SET last_assigned_at = :now WHERE handle = :h"),
                 {"now": now, "h": owner.handle})
    _record(conn, account_id, tier, model, "assigned", owner.handle, now, None, choice.reason)
    event_store.mark_changed(conn, [account_id])
    log.info("Account %s was routed to %s.", account_id, owner.handle)


def _record(conn: sa.Connection, account_id: str, tier: int | None, model: str, status: str,
            owner: str | None, now: int, waiting_since: int | None, reason: str) -> None:
    values = {"a": account_id, "tier": tier, "model": model, "status": status, "owner": owner,
              "at": now if status == "assigned" else None, "since": waiting_since,
              "reason": reason}
    updated = conn.execute(sa.text(
        "UPDATE assignments SET tier = :tier, model = :model, status = :status, owner = :owner, "
        "assigned_at = :at, waiting_since = :since, reason = :reason WHERE account_id = :a"),
        values).rowcount
    if not updated:
        conn.execute(sa.text(
            "INSERT INTO assignments (account_id, tier, model, status, owner, assigned_at, "
            "waiting_since, reason) VALUES (:a, :tier, :model, :status, :owner, :at, :since, "
            ":reason)"), values)


def _alert_team_lead(conn: sa.Connection, playbook: CompiledPlaybook, account_id: str,
                     tier: int | None, choice: Choice, since: int, now: int) -> None:
    """One alert per spell of waiting (its key carries when the wait began)."""
    conn.execute(sa.text(
        "INSERT INTO actions (key, account_id, run, rule, kind, recipient, status, due_at, "
        "not_before, next_attempt_at, created_at, reason, facts, playbook_version) VALUES "
        "(:key, :a, 0, 'routing.unassigned', 'email', 'team_lead', 'pending', :since, :since, "
        ":now, :now, :reason, :facts, :version) ON CONFLICT (key) DO NOTHING"),
        {"key": f"{account_id}/routing/unassigned/{since}", "a": account_id, "since": since,
         "now": now, "version": playbook.version,
         "reason": f"account {account_id} (tier {tier}) is waiting unassigned: {choice.reason}",
         "facts": _encode({"tier": tier, "why": choice.reason}).decode()})


def _move_load(team: dict[str, Member], before: str | None, after: Member | None) -> None:
    """Keep the loads this pass works with true as an account changes hands."""
    previous = team.get(before or "")
    if previous is not None:
        team[previous.handle] = _with_load(previous, max(0, previous.load - 1), None)
    if after is not None:
        current = team[after.handle]
        team[after.handle] = _with_load(current, current.load + 1, None)


def _member_named(team: dict[str, Member], owner: Any) -> Member | None:
    text = str(owner)
    return team.get(text) or next((m for m in team.values()
                                   if m.email.lower() == text.strip().lower()), None)


def _with_load(member: Member, load: int, assigned_at: int | None) -> Member:
    return Member(member.handle, member.email, member.role, member.capacity, member.timezone,
                  member.away_from, member.away_until, member.cover,
                  assigned_at if assigned_at is not None else member.last_assigned_at, load)


def release_finished(conn: sa.Connection, account_ids: Iterable[str], now: int) -> None:
    """Accounts whose run ended no longer count towards their owner's load."""
    event_store.execute_in(conn, "UPDATE assignments SET released_at = :now WHERE account_id "
                                 "IN :ids AND released_at IS NULL", account_ids, now=now)


def save_member(conn: sa.Connection, handle: str, email: str, role: str, capacity: int,
                timezone: str, name: str | None, now: int) -> None:
    """Add a member to the roster, or change one."""
    from firstvalue.engine.days import zone

    if not HANDLE.fullmatch(handle):
        raise ConfigError(f"handle {handle!r} is not a handle: use 1 to 64 lowercase letters, "
                          "digits, dots, dashes or underscores, e.g. ana.lopez")
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not 0 <= capacity <= MAX_CAPACITY:
        raise ConfigError(f"capacity {capacity} is out of range; give the accounts this member "
                          f"can onboard at once, 0 to {MAX_CAPACITY:,}")
    if name is not None and len(name) > 200:
        raise ConfigError("name is longer than 200 characters")
    if len(email) > 320:
        raise ConfigError("email is longer than 320 characters, the most an address can be")
    if "@" not in email:
        raise ConfigError(f"email {email!r} is not an email address")
    if zone(timezone) is None:
        raise ConfigError(f"timezone {timezone!r} is not an IANA zone, e.g. Europe/Berlin")
    values = {"h": handle, "e": email, "r": role, "c": capacity, "tz": timezone, "n": name,
              "now": now}
    # One statement: two writers adding the same handle at once both succeed, the later last.
    conn.execute(sa.text(
        "INSERT INTO team_members (handle, name, email, role, capacity, timezone, created_at) "
        "VALUES (:h, :n, :e, :r, :c, :tz, :now) ON CONFLICT (handle) DO UPDATE SET "
        "email = :e, role = :r, capacity = :c, timezone = :tz, "
        "name = COALESCE(:n, team_members.name)"), values)


def set_away(conn: sa.Connection, handle: str, away_from: int | None, away_until: int | None,
             cover: str | None) -> None:
    """Mark a member away (or back, with both times None), with who covers meanwhile."""
    known = set(conn.execute(sa.text("SELECT handle FROM team_members")).scalars().all())
    if handle not in known:
        raise ConfigError(f"no team member {handle!r}; add them with `firstvalue team add`")
    if cover is not None and cover not in known:
        raise ConfigError(f"cover {cover!r} is not on the roster; add them first")
    if cover == handle:
        raise ConfigError(f"{handle} cannot cover for themselves; name someone else")
    if away_from is not None and away_until is not None and away_until <= away_from:
        raise ConfigError("the away period ends before it starts; give an end after its start")
    if away_from is None and (away_until is not None or cover is not None):
        raise ConfigError("an end of the away period, or a cover, needs its start; give when "
                          "the member is away from")
    conn.execute(sa.text("UPDATE team_members SET away_from = :f, away_until = :u, cover = :c "
                         "WHERE handle = :h"),
                 {"f": away_from, "u": away_until, "c": cover, "h": handle})


def stand_in(team: dict[str, Member], owner: Member, now: int) -> Member | None:
    """Who takes an away owner's new tasks and alerts: their cover when that one is in,
    else nobody (the team queue)."""
    cover = team.get(owner.cover or "")
    if cover is not None and not cover.is_away(now):
        return cover
    return None


def team_json(conn: sa.Connection, now: int) -> list[dict[str, Any]]:
    """The roster as `firstvalue team list --json` and `GET /api/team` show it."""
    from firstvalue.clock import isoformat

    return [{"handle": m.handle, "email": m.email, "role": m.role, "capacity": m.capacity,
             "load": m.load, "timezone": m.timezone, "away": m.is_away(now),
             "away_from": isoformat(m.away_from), "away_until": isoformat(m.away_until),
             "cover": m.cover} for m in load_team(conn)]


def assignment_json(conn: sa.Connection, account_ids: Iterable[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Assignments: who owns each account, by which model, and why."""
    from firstvalue.clock import isoformat

    rows = conn.execute(sa.text("SELECT * FROM assignments ORDER BY account_id")).all()
    wanted = set(account_ids) if account_ids is not None else None
    return [{"account_id": r.account_id, "tier": r.tier, "model": r.model, "status": r.status,
             "owner": r.owner, "assigned_at": isoformat(r.assigned_at),
             "waiting_since": isoformat(r.waiting_since), "reason": r.reason}
            for r in rows if wanted is None or r.account_id in wanted]
