"""What the engine is told about an account: its traits, contacts and events."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import msgspec

_decode = msgspec.json.decode


def as_number(value: Any, *, from_text: bool = False) -> float | None:
    """A property or trait value as a finite number, else None.

    JSON lets a client send an integer of any length, and msgspec decodes it whole: one past a
    float's range (`float()` raises OverflowError), NaN and the infinities are no number to
    compare or add up, and neither is a bool. With `from_text`, text that reads as a number
    counts too (`"12000"` for an `arr` trait).
    """
    if value is None or isinstance(value, bool):
        return None
    if not from_text and not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class EventFact:
    """One track event of the account. `properties` is decoded on first use only."""

    message_id: str
    name: str
    ts: int
    actor: str | None
    raw_properties: str = "{}"
    received_at: int = 0  # when it reached the engine: arrival, or attachment if it was held
    _properties: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def properties(self) -> dict[str, Any]:
        if self._properties is None:
            try:
                decoded = _decode(self.raw_properties)
            except (msgspec.DecodeError, RecursionError):
                decoded = {}  # stored before validation read it whole: treat as empty
            self._properties = decoded if isinstance(decoded, dict) else {}
        return self._properties

    @property
    def order(self) -> tuple[int, str]:
        return (self.ts, self.message_id)


@dataclass(frozen=True, slots=True)
class AccountFacts:
    """An account as the store holds it.

    `traits` keep their history (`{key: [[ts, message_id, value, received_at], ...]}`, see
    store.traits); `events` are the
    account's track events in any order; `contacts` maps an actor to their plain traits.
    """

    account_id: str
    traits: dict[str, list[Any]]
    events: tuple[EventFact, ...]
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The sales-to-CS handoff as stored (`record`, `missing`, `completed_at`), if submitted.
    handoff: dict[str, Any] | None = None


# The order of events: time, then message id (`EventFact.order`), as a sort key that builds
# its tuples in C: the engine sorts events by it several times an evaluation.
by_order = operator.attrgetter("ts", "message_id")
