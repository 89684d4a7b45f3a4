"""Building engine facts by hand: the engine is pure, so its tests need no store."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from firstvalue.clock import parse_instant, to_micros
from firstvalue.engine import AccountFacts, EventFact

_ids = itertools.count(1)


def us(text: str) -> int:
    return to_micros(parse_instant(text))


def event(name: str, when: str, actor: str = "u1", message_id: str | None = None,
          **properties: Any) -> EventFact:
    return EventFact(message_id or f"e{next(_ids):06d}", name, us(when), actor,
                     msgspec.json.encode(properties).decode())


def facts(traits: dict[str, Any], *events: EventFact, account_id: str = "acme",
          contacts: dict[str, dict[str, Any]] | None = None,
          traits_at: str = "2020-01-01T00:00:00Z") -> AccountFacts:
    stamp = us(traits_at)
    stamped = {key: [[stamp, "g1", value, stamp]] for key, value in traits.items()}
    return AccountFacts(account_id, stamped, tuple(events), contacts or {})


def milestone(state: Any, key: str) -> Any:
    return next(m for m in state.milestones if m.key == key)
