"""The benchmark's data set: seeded Segment-spec JSONL, the same bytes for the same arguments.

Each account has a `group` call per user (the first one carries the account's traits), an
`identify` per user, and track events from its contract on: the anchors, the milestone events of
the default playbook, many logins and some events the playbook does not read. About half of the
track events name their account in `context.groupId`; the rest rely on the user's group
membership. The file is sorted by time, except for a few late events written out of order.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

SEED = 20261201
END = datetime(2026, 6, 1, tzinfo=UTC)  # no event is later; the import happens just after
SEGMENTS = (("smb", 50), ("mid_market", 35), ("enterprise", 15))
TIMEZONES = ("America/New_York", "America/Los_Angeles", "Europe/Berlin", "Europe/London",
             "Asia/Tokyo", "Australia/Sydney")
OTHER_NAMES = ("Dashboard Viewed", "Email Opened", "Call Scheduled", "Call Completed",
               "Ticket Opened", "Alert Started", "Export Downloaded")
FORMAT = 2  # bump when the generator changes, so that an old file is not reused
LATE_SHARE = 0.02  # the share of track events written a few hours after their time


def dataset_path(directory: Path, accounts: int, events: int) -> Path:
    return directory / f"events-{accounts}a-{events}e-s{SEED}-v{FORMAT}.jsonl"


def ensure_dataset(directory: Path, accounts: int, events: int) -> Path:
    """The data set's file, generated first when it is not there yet."""
    path = dataset_path(directory, accounts, events)
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    write_dataset(partial, accounts, events)
    partial.rename(path)
    return path


def write_dataset(path: Path, accounts: int, events: int) -> None:
    rng = random.Random(SEED)
    per_account = events // accounts
    extra = events - per_account * accounts
    rows: list[tuple[float, bytes]] = []
    for number in range(accounts):
        budget = per_account + (1 if number < extra else 0)
        rows += _account_messages(rng, number, budget)
    rows.sort(key=lambda row: row[0])
    with path.open("wb") as out:
        for _, line in rows:
            out.write(line)
            out.write(b"\n")


def _account_messages(rng: random.Random, number: int, budget: int) -> list[tuple[float, bytes]]:
    account = f"acct-{number:05d}"
    users = [f"{account}-u{i}" for i in range(1, rng.randint(2, 4) + 1)]
    segment = rng.choices([s for s, _ in SEGMENTS], weights=[w for _, w in SEGMENTS])[0]
    signed = END - timedelta(days=rng.uniform(5, 150), hours=rng.uniform(0, 24))
    script = _Script(rng, account, users, signed, budget)

    script.profile(segment)
    script.anchors(segment)
    script.milestones()
    script.others()
    script.logins()
    return script.rows


class _Script:
    """Writes one account's messages, each as (position in the file, JSON bytes)."""

    def __init__(self, rng: random.Random, account: str, users: list[str], signed: datetime,
                 budget: int) -> None:
        self.rng = rng
        self.account = account
        self.users = users
        self.signed = signed
        self.budget = budget
        self.last = min(END - timedelta(minutes=5), signed + timedelta(days=90))
        self.rows: list[tuple[float, bytes]] = []

    def profile(self, segment: str) -> None:
        traits = {
            "name": f"Benchmark {self.account[-5:]} Inc",
            "segment": segment,
            "tier": {"enterprise": 1, "mid_market": 2, "smb": 3}[segment],
            "timezone": self.rng.choice(TIMEZONES),
            "plan": {"smb": "starter", "mid_market": "growth", "enterprise": "enterprise"}[segment],
            "contract_signed_at": _iso(self.signed),
        }
        for index, user in enumerate(self.users):
            moment = self.signed - timedelta(days=2, minutes=10 - index)
            self.emit({"type": "group", "userId": user, "groupId": self.account,
                       "traits": traits if index == 0 else {}}, moment)
            self.emit({"type": "identify", "userId": user,
                       "traits": {"role": "champion" if index == 0 else "user",
                                  "email": f"{user}@example.com"}},
                      moment + timedelta(minutes=1))

    def anchors(self, segment: str) -> None:
        self.track("Deal Closed Won", self.signed, {"deal_id": f"deal-{self.account}"})
        if segment == "smb":
            return
        start = self.signed + timedelta(days=self.rng.randint(2, 9), hours=self.rng.randint(0, 6))
        self.track("Kickoff Scheduled", self.signed + timedelta(hours=20),
                   {"start_time": _iso(start)})
        if self.rng.random() < 0.85:
            self.track("Kickoff Completed", start + timedelta(minutes=45))

    def milestones(self) -> None:
        moment = self.signed + timedelta(days=self.rng.uniform(0.2, 4))
        steps = (("Workspace Created", 0.97), ("Integration Connected", 0.9),
                 ("User Invited", 0.85), ("Data Source Connected", 0.75),
                 ("Workflow Run", 0.65), ("Value Delivered", 0.5))
        for name, chance in steps:
            if self.rng.random() > chance:
                return
            self.track(name, moment, {"source": "salesforce"})
            moment += timedelta(days=self.rng.uniform(0.1, 12))
        for _ in range(self.rng.randint(1, 6)):
            self.track("Workflow Run", moment, {"template": "lead_enrichment"})
            moment += timedelta(days=self.rng.uniform(0.5, 5))
        if self.rng.random() < 0.7:
            self.track("Report Shared", moment, user=self.users[1])

    def others(self) -> None:
        for _ in range(self.rng.randint(2, 8)):
            self.track(self.rng.choice(OTHER_NAMES), self.random_moment(), {"n": 1})

    def logins(self) -> None:
        left = self.budget - len(self.rows)
        moments = sorted(self.random_moment() for _ in range(max(0, left)))
        for moment in moments:
            self.track("Signed In", moment, user=self.rng.choice(self.users))

    def random_moment(self) -> datetime:
        span = (self.last - self.signed).total_seconds()
        return self.signed + timedelta(seconds=self.rng.uniform(0, span))

    def track(self, name: str, moment: datetime, properties: dict[str, Any] | None = None,
              user: str | None = None) -> None:
        moment = min(moment, self.last)
        message: dict[str, Any] = {"type": "track", "event": name,
                                   "userId": user or self.users[0],
                                   "properties": properties or {}}
        if self.rng.random() < 0.5:
            message["context"] = {"groupId": self.account}
        position = moment.timestamp()
        if self.rng.random() < LATE_SHARE:
            position += self.rng.uniform(600, 6 * 3600)  # arrives in the file a little late
        self.emit(message, moment, position)

    def emit(self, message: dict[str, Any], moment: datetime,
             position: float | None = None) -> None:
        if len(self.rows) >= self.budget:
            return
        # Random ids, as Segment's libraries send: nothing about them follows time or account.
        message["messageId"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        message["timestamp"] = _iso(moment)
        line = msgspec.json.encode(message)
        self.rows.append((moment.timestamp() if position is None else position, line))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"
