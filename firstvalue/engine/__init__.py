"""The pure engine: facts, playbook and `now` in; the account's state out. No clock, no I/O."""

from firstvalue.engine.evaluate import evaluate_account
from firstvalue.engine.facts import AccountFacts, EventFact

__all__ = ["AccountFacts", "EventFact", "evaluate_account"]
