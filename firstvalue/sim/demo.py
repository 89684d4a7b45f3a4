"""`firstvalue demo`: a seeded sandbox of sample accounts run through the engine on a virtual clock.

Every sample account follows one behaviour (fast starter, typical, slow, never connecting data,
champion going quiet, scope creep freeze) in one of the three segments. Its events are generated
up front with their own timestamps; the simulation then walks the 120 days that end on `today`
one hour at a time, delivering each hour's events as they would have arrived, ticking the
engine and dispatching what fell due, as `serve` would on the real clock. Deliveries go to a
sandbox (a list in memory), and the CRM sync to a receiver the demo starts on 127.0.0.1, so
nothing leaves the machine.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa

from firstvalue.actions.dispatch import Dispatcher, sandbox_channels
from firstvalue.clock import to_micros
from firstvalue.crm.receiver import DemoCrm
from firstvalue.engine.compiled import CompiledPlaybook
from firstvalue.errors import ConfigError
from firstvalue.ingest.service import ingest_messages
from firstvalue.metrics.report import build_report
from firstvalue.runtime.evaluation import held_events, tick
from firstvalue.runtime.handoff import submit_handoff
from firstvalue.runtime.routing import assignment_json, save_member, set_away, team_json
from firstvalue.store.database import open_database

SIMULATED_DAYS = 120
BEHAVIOURS = (("fast", 20), ("typical", 30), ("slow", 15), ("never_connects", 13),
              ("champion_quiet", 12), ("scope_creep", 10))
SEGMENTS = (("smb", 40), ("mid_market", 40), ("enterprise", 20))
TIMEZONES = ("Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo", "America/New_York",
             "Europe/London", "Australia/Sydney", None)
COUNTRIES = {"Europe/Berlin": "DE", "America/Los_Angeles": "US", "Asia/Tokyo": "JP",
             "America/New_York": "US", "Europe/London": "GB", "Australia/Sydney": "AU",
             None: "US"}
FUNCTIONS = ("sales", "ops", "marketing", "engineering", "finance")
OWNERS = ("csm-ana", "csm-ben", "csm-chloe", "csm-dev", "csm-eli")
# The demo's team: handle, role, capacity, timezone. Tier 2 (mid-market) goes to the CSMs by
# load relative to capacity, tier 1 (enterprise) to an implementation manager of its own;
# tier 3 (SMB) is self-serve. The managers' capacity is short on purpose: some enterprise
# accounts wait unassigned, and the team lead hears of each.
DEMO_TEAM = (("ana", "csm", 30, "Europe/Berlin"), ("ben", "csm", 25, "Europe/London"),
             ("chloe", "csm", 25, "America/New_York"), ("dev", "csm", 20, "Asia/Tokyo"),
             ("eli", "csm", 20, "America/Los_Angeles"),
             ("iris", "implementation_manager", 20, "Europe/Berlin"),
             ("jon", "implementation_manager", 20, "America/New_York"),
             ("lead", "team_lead", 0, "Europe/Berlin"))
USE_CASES = ("lead_enrichment", "competitive_intelligence", "pipeline_visibility")
PERSONAS = ("vp_sales", "ops_manager", "revops")
# Day offsets of the default playbook's targets, per segment (see default.yaml).
TARGETS = {"smb": (1, 2, 3, 5, 14), "mid_market": (3, 7, 14, 21, 30),
           "enterprise": (5, 14, 30, 45, 60)}
SPEED = {"fast": (0.3, 0.7), "typical": (0.6, 1.2), "slow": (1.4, 2.3)}
FEATURES = ("Dashboard Started", "Alert Started", "Automation Started", "Sequence Started",
            "Enrichment Started", "Scoring Started")


@dataclass
class DemoResult:
    report: dict[str, Any]
    accounts: int
    events: int
    ticks: int
    seconds: float
    now: str
    crm_sync: dict[str, Any] = field(default_factory=dict)


@dataclass
class SampleAccount:
    """One generated account and its events (Segment-spec messages, any order)."""

    id: str
    segment: str
    behaviour: str
    timezone: str | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    handoff_at: datetime | None = None  # when the AE submits the handoff (gated tracks)
    use_case: str | None = None


def run_demo(path: Path, playbook: CompiledPlaybook, account_count: int, seed: int,
             today: str | None, quiet: bool = False) -> DemoResult:
    started = time.perf_counter()
    last_day = _last_day(today)
    now = datetime.combine(last_day, datetime.min.time(), UTC) + timedelta(hours=12)
    first = now - timedelta(days=SIMULATED_DAYS)

    _check_replaceable(path)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    database = open_database(f"sqlite:///{path}")
    with database.write() as conn:
        conn.execute(sa.text("INSERT INTO counters (name, value) VALUES ('demo_database', 1)"))
        for handle, role, capacity, zone_name in DEMO_TEAM:
            save_member(conn, handle, f"{handle}@team.firstvalue.invalid", role, capacity,
                        zone_name, handle.title(), to_micros(first))
        # Ben is away for ten days mid-window: Chloe takes his new tasks and alerts.
        set_away(conn, "ben", to_micros(first + timedelta(days=60)),
                 to_micros(first + timedelta(days=70)), "chloe")
    accounts = generate_accounts(account_count, seed, first, now)
    messages = sorted((m for a in accounts for m in a.messages), key=lambda m: m["timestamp"])

    ticks = 0
    delivered = 0
    # The sandbox delivers to a list: a demo sends nothing out of the machine.
    outbox: list[Any] = []
    dispatcher = Dispatcher(database, playbook, sandbox_channels(outbox), lambda: True)
    crm = DemoCrm().start()  # its CRM: a receiver on 127.0.0.1 (firstvalue/crm/receiver.py)
    handoffs = sorted((a.handoff_at, a.id) for a in accounts if a.handoff_at is not None)
    use_cases = {a.id: a.use_case for a in accounts}
    for step in _hourly_steps(first, now):
        batch = []
        while delivered < len(messages) and messages[delivered]["timestamp"] <= step.isoformat():
            batch.append(msgspec.json.encode(messages[delivered]))
            delivered += 1
        step_micros = to_micros(step)
        if batch:
            ingest_messages(database, batch, step_micros, playbook.anchor_names)
        while handoffs and handoffs[0][0] <= step:
            _, account_id = handoffs.pop(0)
            with database.write() as conn:
                submit_handoff(conn, playbook.loaded.model.handoff, account_id,
                               {**DEMO_HANDOFF, "use_case": use_cases[account_id],
                                "stakeholders": [{"name": "Sample Champion 1",
                                                  "role": "champion",
                                                  "email": f"{account_id}-u1@example.com"}]},
                               step_micros, "demo")
        tick(database, playbook, step_micros)
        dispatcher.run_once(step_micros)
        crm.sync(database, step_micros)
        ticks += 1

    now_micros = to_micros(now)
    crm_sync = crm.finish(database, now_micros)
    report = build_report(database, playbook, now_micros, held=held_events(database, now_micros))
    report["crm_sync"] = crm_sync
    with database.engine.connect() as conn:
        report["routing"] = {"team": team_json(conn, now_micros),
                             "assignments": Counter(a["status"] for a in assignment_json(conn))}
    database.dispose()
    return DemoResult(report, len(accounts), len(messages), ticks,
                      time.perf_counter() - started, now.isoformat(), crm_sync)


def _last_day(today: str | None) -> date:
    if today is None:
        return datetime.now(UTC).date()
    try:
        return date.fromisoformat(today)
    except ValueError:
        raise ConfigError(f"--today {today!r} is not a date; write it as 2026-12-04") from None


def _check_replaceable(path: Path) -> None:
    """The demo replaces its own database only: never a store with real accounts in it."""
    if str(path).startswith(("sqlite:", "postgresql:", "postgres:")):
        plain = re.sub(r"^[a-z]+:/*", "", str(path)) or "firstvalue-demo.db"
        raise ConfigError(f"demo --db takes a file path, not a URL: write --db {plain}")
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            marked = conn.execute(
                "SELECT value FROM counters WHERE name = 'demo_database'").fetchone()
    except sqlite3.Error:
        marked = None
    if not marked:
        raise ConfigError(f"{str(path)!r} exists and is not a demo database; the demo will not "
                          "replace it. Give another --db file, or remove that file yourself")


def _hourly_steps(first: datetime, now: datetime) -> Iterator[datetime]:
    """Every hour, as `serve`'s scheduler would tick: events arrive within the hour they
    happen, and day-N rules go out at their window's opening, not hours after it."""
    step = first
    while step < now:
        step = min(step + timedelta(hours=1), now)
        yield step


def generate_accounts(count: int, seed: int, first: datetime,
                      now: datetime) -> list[SampleAccount]:
    rng = random.Random(seed)
    accounts = []
    for number in range(1, count + 1):
        segment = _pick(rng, SEGMENTS)
        behaviour = _pick(rng, BEHAVIOURS)
        tz_name = rng.choice(TIMEZONES)
        # Contracts are spread over the window, so "today" finds accounts at every stage.
        signed = first + timedelta(days=rng.uniform(2, SIMULATED_DAYS - 3),
                                   hours=rng.uniform(-4, 4))
        account = SampleAccount(f"acct-{number:04d}", segment, behaviour, tz_name)
        _AccountScript(rng, account, signed, now).write()
        account.handoff_at = _handoff_time(seed, account, signed)
        accounts.append(account)
    return accounts


def _handoff_time(seed: int, account: SampleAccount, signed: datetime) -> datetime | None:
    """When the AE submits the handoff of a gated account: most within hours of the contract,
    some after the reminder, a few only after their manager hears of it, and some never. Its
    own random stream, so the rest of the sample stays as it was."""
    if account.segment == "smb":
        return None  # self-serve: no sales handoff
    draw = random.Random(f"{seed}:handoff:{account.id}").random()
    if draw < 0.65:
        return signed + timedelta(hours=2 + 10 * draw)
    if draw < 0.85:
        return signed + timedelta(hours=30 + 40 * (draw - 0.65))
    if draw < 0.95:
        return signed + timedelta(hours=80 + 100 * (draw - 0.85))
    return None


DEMO_HANDOFF = {"use_case": None, "stakeholders": [{"name": "Sample Champion",
                                                     "role": "champion"}],
                "success_criteria": ["a first result within the target"],
                "technical_requirements": {"crm": "salesforce"},
                "commitments": ["a weekly check-in during onboarding"]}


def _pick(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


class _AccountScript:
    """Writes one account's events, following its behaviour."""

    def __init__(self, rng: random.Random, account: SampleAccount, signed: datetime,
                 now: datetime) -> None:
        self.rng = rng
        self.account = account
        self.signed = signed
        self.now = now
        self.tz = ZoneInfo(account.timezone or "UTC")
        self.sequence = 0
        size = {"smb": (2, 3), "mid_market": (3, 5), "enterprise": (4, 7)}[account.segment]
        self.users = [f"{account.id}-u{i}" for i in range(1, rng.randint(*size) + 1)]
        self.champion = self.users[0]

    def write(self) -> None:
        self._profile()
        day0 = self._contract_and_kickoff()
        if day0 is None:
            return
        behaviour = self.account.behaviour
        targets = TARGETS[self.account.segment]
        low, high = SPEED.get(behaviour, (0.6, 1.2))
        reached = self._milestones(day0, targets, low, high)
        self._logins(day0, reached)
        self._calls(day0)
        self._outcomes(day0, reached)

    def _profile(self) -> None:
        a = self.account
        rng = self.rng
        traits: dict[str, Any] = {
            "name": f"Sample {a.id[-4:]} {rng.choice(['Labs', 'Systems', 'Group', 'Co'])}",
            "segment": a.segment,
            "tier": {"enterprise": 1, "mid_market": 2, "smb": 3}[a.segment],
            "country": COUNTRIES[a.timezone],
            # Owners come from routing (the roster in `DEMO_TEAM`); the draw stays so that the
            # rest of the sample is the same.
            "demo_sales_owner": rng.choice(OWNERS) if a.segment != "smb" else None,
            "plan": {"smb": "starter", "mid_market": "growth", "enterprise": "enterprise"}[
                a.segment],
            "arr": {"smb": 6000, "mid_market": 36000, "enterprise": 180000}[a.segment]
            + rng.randint(0, 20) * 1000,
            "seats": {"smb": 5, "mid_market": 25, "enterprise": 150}[a.segment],
            "use_case": rng.choice(USE_CASES),
            "persona": rng.choice(PERSONAS),
            "demo_behaviour": a.behaviour,
        }
        a.use_case = traits["use_case"]
        if a.timezone:
            traits["timezone"] = a.timezone
        for index, user in enumerate(self.users):
            role = "champion" if index == 0 else ("admin" if index == 1 else "user")
            # Sample people at the reserved example.com domain: the demo delivers to a sandbox.
            self._emit("identify", self.signed - timedelta(days=1), user=user, traits={
                "name": f"Sample {role.title()} {index + 1}", "email": f"{user}@example.com",
                "role": role, "function": FUNCTIONS[index % len(FUNCTIONS)],
                "title": f"{role.title()} {index + 1}"})
            self._emit("group", self.signed - timedelta(hours=12 - index), user=user,
                       group=a.id, traits=traits if index == 0 else {})

    def _contract_and_kickoff(self) -> datetime | None:
        """The contract signing, and for tracks with one, the kickoff; returns day 0."""
        if self.rng.random() < 0.75:
            deal = {"deal_id": f"deal-{self.account.id}"}
            self._track("Deal Closed Won", self.signed, props=deal)
        else:
            self._emit("group", self.signed, user=self.champion, group=self.account.id,
                       traits={"contract_signed_at": self.signed.isoformat()})
        if self.account.segment == "smb":
            return self.signed
        delay = {"fast": 2, "typical": 5, "slow": 12}.get(self.account.behaviour, 6)
        start = self._local(self.signed + timedelta(days=delay + self.rng.randint(0, 3)), 10)
        booked = self.signed + timedelta(hours=20)
        if self.rng.random() < 0.3:
            self._emit("group", booked, user=self.champion, group=self.account.id,
                       traits={"kickoff_at": start.isoformat()})
        else:
            self._track("Kickoff Scheduled", booked, props={"start_time": start.isoformat()})
        if self.rng.random() < 0.2:
            # Rebooked two days later: the booking made last decides day 0.
            start = start + timedelta(days=2)
            self._track("Kickoff Scheduled", booked + timedelta(days=1),
                        props={"start_time": start.isoformat()})
        self._track("Kickoff Completed", start + timedelta(minutes=45))
        return start

    def _milestones(self, day0: datetime, targets: tuple[int, ...], low: float,
                    high: float) -> dict[str, datetime]:
        behaviour = self.account.behaviour
        rng = self.rng
        reached: dict[str, datetime] = {}

        def at(target: int) -> datetime:
            return self._local(day0 + timedelta(days=round(target * rng.uniform(low, high))),
                               rng.randint(9, 17))

        configured = at(targets[0])
        self._track("Workspace Created", configured - timedelta(hours=3))
        self._track("Integration Connected", configured - timedelta(hours=1))
        if behaviour != "champion_quiet" or rng.random() < 0.5:
            self._track("User Invited", configured, props={"invitee_function": "ops"})
            reached["account_configured"] = configured
        if behaviour == "never_connects":
            for attempt in range(rng.randint(2, 4)):
                when = configured + timedelta(days=1 + attempt * 2, hours=2)
                self._track("Data Source Connection Failed", when,
                            props={"source": "salesforce", "error": "sso_required"})
            self._track("Ticket Opened", configured + timedelta(days=3),
                        props={"topic": rng.choice(["sso", "security_review"])})
            return reached
        if behaviour == "scope_creep":
            # Everything started at once, nothing taken to a first result.
            for index, feature in enumerate(rng.sample(FEATURES, 5)):
                self._track(feature, configured + timedelta(days=2 + index * 2))
            return reached
        if behaviour == "champion_quiet":
            quiet_from = day0 + timedelta(days=rng.randint(5, 9))
            data = at(targets[1])
            if data < quiet_from:
                self._track("Data Source Connected", data, props={"source": "salesforce"})
                reached["data_connected"] = data
            return reached

        steps = (("data_connected", "Data Source Connected", targets[1]),
                 ("first_workflow", "Workflow Run", targets[2]),
                 ("first_value", "Value Delivered", targets[3]))
        last = configured
        for key, name, target in steps:
            moment = max(at(target), last + timedelta(hours=2))
            self._track(name, moment, props={"source": "salesforce"} if key == "data_connected"
                        else {"template": rng.choice(USE_CASES)})
            reached[key] = last = moment
        if len(self.users) > 1:
            second = max(at(targets[4]), last + timedelta(hours=1))
            self._track("Report Shared", second, user=self.users[1])
            reached["second_user"] = second
        for extra in range(rng.randint(2, 8)):
            again = last + timedelta(days=1 + extra * 3, hours=rng.randint(0, 6))
            self._track("Workflow Run", again)
        return reached

    def _logins(self, day0: datetime, reached: dict[str, datetime]) -> None:
        behaviour = self.account.behaviour
        rng = self.rng
        last_day = {"champion_quiet": rng.randint(5, 9), "never_connects": rng.randint(12, 25),
                    "scope_creep": rng.randint(20, 40)}.get(behaviour, 119)
        rate = {"fast": 0.8, "typical": 0.6, "slow": 0.4}.get(behaviour, 0.5)
        for offset in range(-1, last_day):
            day = day0 + timedelta(days=offset)
            if day.astimezone(self.tz).weekday() >= 5 and rng.random() < 0.8:
                continue
            for user in self.users:
                if behaviour == "champion_quiet" and user == self.champion and offset > 4:
                    continue
                if rng.random() < rate:
                    self._track("Signed In", self._local(day, rng.randint(8, 18)), user=user)

    def _calls(self, day0: datetime) -> None:
        if self.account.segment == "smb":
            return
        rng = self.rng
        for week in range(1, 5):
            when = self._local(day0 + timedelta(days=7 * week), 15)
            self._track("Call Scheduled", when - timedelta(days=3), props={"start_time":
                                                                           when.isoformat()})
            quiet = self.account.behaviour in ("champion_quiet", "never_connects")
            if quiet and week >= 2 and rng.random() < 0.7:
                self._track("Call Missed", when + timedelta(minutes=10))
            else:
                self._track("Call Completed", when + timedelta(minutes=30),
                            props={"attendees": [self.champion]})

    def _outcomes(self, day0: datetime, reached: dict[str, datetime]) -> None:
        """Accounts that reached value expand more and churn less; a signed pilot of 90 days
        renews into a yearly contract."""
        rng = self.rng
        if "first_value" in reached and rng.random() < 0.35:
            self._track("Expansion Closed", reached["first_value"] + timedelta(days=40),
                        props={"amount": rng.randint(5, 40) * 1000})
        churn = 0.05 if "first_value" in reached else 0.3
        if rng.random() < churn:
            self._track("Account Churned", day0 + timedelta(days=rng.randint(45, 110)))
        elif "first_value" in reached and rng.random() < 0.6:
            self._track("Renewal Closed", self.signed + timedelta(days=90),
                        props={"term": "annual"})

    def _local(self, moment: datetime, hour: int) -> datetime:
        local = moment.astimezone(self.tz)
        return local.replace(hour=hour, minute=self.rng.randint(0, 59), second=0, microsecond=0)

    def _track(self, name: str, moment: datetime, props: dict[str, Any] | None = None,
               user: str | None = None) -> None:
        self._emit("track", moment, user=user or self.champion, event=name, props=props or {})

    def _emit(self, kind: str, moment: datetime, user: str, event: str | None = None,
              props: dict[str, Any] | None = None, traits: dict[str, Any] | None = None,
              group: str | None = None) -> None:
        if moment > self.now:
            return  # the future has not happened yet
        self.sequence += 1
        message: dict[str, Any] = {
            "type": kind, "messageId": f"demo-{self.account.id}-{self.sequence}",
            "userId": user, "timestamp": moment.astimezone(UTC).isoformat()}
        if kind == "track":
            message["event"] = event
            message["properties"] = props or {}
            message["context"] = {"groupId": self.account.id}
        elif kind == "group":
            message["groupId"] = group
            message["traits"] = {k: v for k, v in (traits or {}).items() if v is not None}
        else:
            message["traits"] = traits or {}
        self.account.messages.append(message)
