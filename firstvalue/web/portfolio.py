"""The portfolio: a summary of every account's stored state, kept in memory and refreshed from
the store by what changed, so that filtering, sorting and paging 10,000 accounts costs a few
milliseconds a request.

Each refresh reads only `(id, evaluated_at, evaluated_seq)` of every account, and decodes the
stored state of the accounts whose pair moved since the last one: the engine's tick wrote them.
"""

from __future__ import annotations

import threading
import typing
import zoneinfo
from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec
import sqlalchemy as sa

from firstvalue.engine.days import local_date, zone
from firstvalue.playbook.model import StallKind
from firstvalue.store.database import Database

DUE_SOON_DAYS = 3  # an open milestone whose target day is this close is "due"
PAGE_SIZES = (25, 50, 100, 200)
SORTS = ("risk", "name", "day", "owner", "tier", "segment")
STATUSES = ("onboarding", "finished", "not_started", "all")
UNOWNED = "(none)"  # the owner filter's value for accounts without an owner
STALL_KINDS: tuple[str, ...] = typing.get_args(StallKind)


class _Milestone(msgspec.Struct):
    key: str
    name: str = ""
    status: str = "open"
    on_time: bool | None = None
    due_on: str | None = None
    target_day: int | None = None
    overdue_days: int | None = None
    completed_at: str | None = None


class _Stall(msgspec.Struct):
    kind: str
    status: str
    diagnosis: str = "unknown"
    milestone: str | None = None
    opened_at: str | None = None


class _Run(msgspec.Struct):
    number: int
    status: str
    started_at: str | None = None


class _Scheduled(msgspec.Struct):
    rule: str
    due_at: str


class _Summary(msgspec.Struct):
    id: str
    name: str | None = None
    segment: str | None = None
    tier: int | None = None
    track: str | None = None
    timezone: str = "UTC"
    owner: str | None = None
    arr: float | None = None
    day0: str | None = None
    run: _Run | None = None
    milestones: list[_Milestone] = []
    stalls: list[_Stall] = []
    current_milestone: str | None = None
    evaluated_at: str | None = None
    next_scheduled: _Scheduled | None = None
    error: str | None = None


_decode = msgspec.json.Decoder(_Summary).decode


@dataclass(frozen=True)
class Row:
    """One account as the portfolio lists it; `marks` and `day` are worked out when shown."""

    id: str
    name: str
    search: str  # the name and id, lower case
    segment: str | None
    tier: int | None
    track: str | None
    owner: str | None
    arr: float
    status: str  # onboarding, finished or not_started
    day0: date | None
    tz: zoneinfo.ZoneInfo
    milestones: tuple[_Milestone, ...]
    stall: _Stall | None  # the first open stall, if any
    stall_kinds: frozenset[str]  # the kinds of all its open stalls
    other_stall_kinds: tuple[str, ...]  # the kinds of the open stalls after the first, sorted
    open_stalls: int
    overdue: int  # open milestones past their target day
    overdue_days: int  # the most days any is past it
    evaluated_at: str | None
    next_scheduled: _Scheduled | None  # the next rule to come due, as last evaluated
    # Riskiest first: an open stall, then overdue milestones (how many, how late), then a
    # lower tier and a larger ARR.
    risk_key: tuple[Any, ...]
    name_key: tuple[str, str]

    def day(self, now: int) -> int | None:
        if self.day0 is None:
            return None
        return (local_date(now, self.tz) - self.day0).days

    def marks(self, now: int) -> list[tuple[str, str, str]]:
        """(key, mark, label) per milestone: done_on_time, done_late, overdue, due, upcoming."""
        today = local_date(now, self.tz)
        ended = self.status == "finished"
        return [(m.key, mark, f"{m.name or m.key}: {MARK_LABELS[mark]}"
                 + (f" (due {m.due_on})" if m.due_on and m.status != "done" else ""))
                for m in self.milestones for mark in (milestone_mark(m, today, ended),)]



MARK_LABELS = {"done_on_time": "done on time", "done_late": "done late", "overdue": "overdue",
               "due": "due", "upcoming": "upcoming", "missed": "not reached, the run ended"}


def milestone_mark(milestone: Any, today: date, ended: bool = False) -> str:
    """A milestone's mark as the portfolio and the account page show it (MARK_LABELS)."""
    if milestone.status == "done":
        return "done_late" if milestone.on_time is False else "done_on_time"
    if ended:
        return "missed"
    if milestone.due_on is None:
        return "upcoming"
    due = date.fromisoformat(milestone.due_on)
    if due < today:
        return "overdue"
    return "due" if (due - today).days <= DUE_SOON_DAYS else "upcoming"


def _row(summary: _Summary) -> Row:
    run = summary.run
    status = "not_started" if run is None else (
        "onboarding" if run.status == "active" else "finished")
    open_stalls = [s for s in summary.stalls if s.status == "open"]
    overdue = [m.overdue_days or 0 for m in summary.milestones
               if m.status != "done" and (m.overdue_days or 0) > 0]
    return Row(id=summary.id, name=summary.name or summary.id,
               search=f"{summary.name or ''}\n{summary.id}".lower(), segment=summary.segment,
               tier=summary.tier, track=summary.track, owner=summary.owner,
               arr=float(summary.arr or 0), status=status,
               day0=date.fromisoformat(summary.day0) if summary.day0 else None,
               tz=zone(summary.timezone) or zoneinfo.ZoneInfo("UTC"),
               milestones=tuple(summary.milestones),
               stall=open_stalls[0] if open_stalls else None,
               stall_kinds=frozenset(s.kind for s in open_stalls),
               other_stall_kinds=tuple(sorted({s.kind for s in open_stalls[1:]})),
               open_stalls=len(open_stalls),
               overdue=len(overdue),
               overdue_days=max(overdue, default=0), evaluated_at=summary.evaluated_at,
               next_scheduled=summary.next_scheduled,
               risk_key=(not open_stalls, -len(overdue), -max(overdue, default=0),
                         summary.tier if summary.tier is not None else 99,
                         -float(summary.arr or 0), summary.id),
               name_key=((summary.name or summary.id).lower(), summary.id))


@dataclass(frozen=True)
class Query:
    owner: str | None = None
    segment: str | None = None
    tier: int | None = None
    track: str | None = None
    stall: str | None = None  # "open", "none", or a stall kind
    status: str = "onboarding"
    q: str = ""
    sort: str = "risk"
    descending: bool = False
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    total: int  # matching the filters
    pages: int
    query: Query
    choices: dict[str, list[Any]]  # the values each filter can take


class Portfolio:
    """The accounts' summaries, by id; `refresh` brings them up to the store's."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._rows: dict[str, Row] = {}
        self._seen: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._choices: dict[str, list[Any]] | None = None
        self._mark: tuple[Any, ...] | None = None

    def refresh(self) -> None:
        with self._lock, self.database.engine.connect() as conn:
            mark = _fingerprint(conn)
            if mark == self._mark:
                return
            if self._mark is None:
                changed = self._scan(conn, None)
            else:
                # What was evaluated since the last look; an account evaluated at an earlier
                # time than before (a tick run with --now in the past) or removed shows in the
                # fingerprint only, and costs a whole scan.
                changed = self._scan(conn, self._mark[3])
                if self._held_fingerprint() != mark:
                    changed = self._scan(conn, None)
            self._load(conn, changed)
            self._mark = mark
            if changed or self._choices is None:
                self._choices = _choices(self._rows.values())

    def _scan(self, conn: sa.Connection, since: int | None) -> list[str]:
        """The accounts whose (evaluated_at, evaluated_seq) moved, from the index alone."""
        sql = ("SELECT id, evaluated_at, evaluated_seq FROM accounts WHERE evaluated_at IS NOT "
               "NULL" + (" AND evaluated_at >= :since" if since is not None else ""))
        current = {r[0]: (r[1], r[2]) for r in conn.execute(sa.text(sql), {"since": since})}
        if since is None:
            for gone in set(self._seen) - set(current):
                self._seen.pop(gone)
                self._rows.pop(gone, None)
        changed = [i for i, mark in current.items() if self._seen.get(i) != mark]
        self._seen.update((i, current[i]) for i in changed)
        return changed

    def _held_fingerprint(self) -> tuple[Any, ...]:
        marks = self._seen.values()
        return (len(self._seen), sum(seq for _, seq in marks),
                sum(at // 1_000_000 for at, _ in marks), max((at for at, _ in marks), default=0))

    def _load(self, conn: sa.Connection, changed: list[str]) -> None:
        from firstvalue.store.events import select_in

        for account_id, state in select_in(
                conn, "SELECT id, state FROM accounts WHERE id IN :ids", changed):
            summary = _decode(state) if state is not None else None
            if summary is not None and summary.error is None:
                self._rows[account_id] = _row(summary)
            else:
                self._rows.pop(account_id, None)

    def rows(self) -> list[Row]:
        self.refresh()
        return list(self._rows.values())

    def get(self, account_id: str) -> Row | None:
        self.refresh()
        return self._rows.get(account_id)

    def page(self, query: Query) -> Page:
        rows = self.rows()
        choices = self._choices or {}
        found = [r for r in rows if _matches(r, query)]
        found.sort(key=_SORT_KEYS[query.sort], reverse=query.descending)
        pages = max(1, -(-len(found) // query.per_page))
        page = min(query.page, pages)
        start = (page - 1) * query.per_page
        return Page(found[start:start + query.per_page], len(found), pages,
                    _with_page(query, page), choices)


def _fingerprint(conn: sa.Connection) -> tuple[Any, ...]:
    """Of every evaluated account, from the index: how many, the sum of their sequence numbers
    and of their evaluation times (in seconds), and the latest evaluation time."""
    row = conn.execute(sa.text(
        "SELECT COUNT(evaluated_at), COALESCE(SUM(evaluated_seq), 0), "
        "COALESCE(SUM(evaluated_at / 1000000), 0), COALESCE(MAX(evaluated_at), 0) "
        "FROM accounts WHERE evaluated_at IS NOT NULL")).one()
    return tuple(int(value) for value in row)


def _choices(rows: Any) -> dict[str, list[Any]]:
    rows = list(rows)
    return {"owner": sorted({r.owner for r in rows if r.owner}),
            "segment": sorted({r.segment for r in rows if r.segment}),
            "tier": sorted({r.tier for r in rows if r.tier is not None}),
            "track": sorted({r.track for r in rows if r.track}),
            "stall": sorted({kind for r in rows for kind in r.stall_kinds})}


def _matches(row: Row, query: Query) -> bool:
    if query.status != "all" and row.status != query.status:
        return False
    if query.owner is not None and (row.owner or UNOWNED) != query.owner:
        return False
    if query.segment is not None and row.segment != query.segment:
        return False
    if query.tier is not None and row.tier != query.tier:
        return False
    if query.track is not None and row.track != query.track:
        return False
    if query.stall == "open" and row.stall is None:
        return False
    if query.stall == "none" and row.stall is not None:
        return False
    if query.stall not in (None, "open", "none") and query.stall not in row.stall_kinds:
        return False
    return not query.q or query.q.lower() in row.search


def _with_page(query: Query, page: int) -> Query:
    from dataclasses import replace

    return replace(query, page=page)


_SORT_KEYS = {
    "risk": lambda r: r.risk_key,
    "name": lambda r: r.name_key,
    "day": lambda r: (r.day0 is None, r.day0 or date.max, r.id),
    "owner": lambda r: (r.owner is None, r.owner or "", r.name.lower()),
    "tier": lambda r: (r.tier is None, r.tier or 0, r.name.lower()),
    "segment": lambda r: (r.segment is None, r.segment or "", r.name.lower()),
}


def next_actions(database: Database, account_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each account's next pending action (rule, kind, due time), for the rows shown."""
    from firstvalue.store.events import select_in

    found: dict[str, dict[str, Any]] = {}
    with database.engine.connect() as conn:
        # By account (its index), the status read here: given `status = 'pending'`, SQLite
        # walks every pending row of the store instead.
        rows = select_in(conn, "SELECT account_id, key, rule, kind, recipient, status, due_at, "
                               "next_attempt_at FROM actions WHERE account_id IN :ids",
                         account_ids)
    for row in sorted((r for r in rows if r.status == "pending"),
                      key=lambda r: (r.due_at, r.key)):
        found.setdefault(row.account_id, dict(row._mapping))
    return found
