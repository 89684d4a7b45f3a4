"""Validating and storing a group of raw messages: the one path HTTP and file imports share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from firstvalue.ingest.messages import Accepted, Rejected, validate_message
from firstvalue.ingest.pipeline import REJECTED, store_messages
from firstvalue.store.database import Database, retry_conflicts


@dataclass(frozen=True, slots=True)
class MessageStatus:
    message_id: str | None
    status: str
    reason: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"messageId": self.message_id, "status": self.status, "reason": self.reason}


def ingest_messages(database: Database, raws: Sequence[bytes], received_at: int,
                    anchor_names: frozenset[str], batch_sent_at: datetime | None = None,
                    implied_type: str | None = None,
                    fallback_ids: Sequence[str | None] | None = None,
                    from_file: bool = False) -> list[MessageStatus]:
    """Validate each raw message, store the valid ones in one transaction, say what became of
    each. Nothing is stored if the transaction fails."""
    if fallback_ids:
        judged = [validate_message(raw, received_at, batch_sent_at, implied_type, fallback)
                  for raw, fallback in zip(raws, fallback_ids, strict=True)]
    else:
        judged = [validate_message(raw, received_at, batch_sent_at, implied_type)
                  for raw in raws]
    statuses = iter(store_accepted(database, judged, anchor_names))
    result = []
    for item in judged:
        if isinstance(item, Rejected):
            result.append(MessageStatus(None, REJECTED, item.reason))
        else:
            result.append(MessageStatus(item.message_id, next(statuses)))
    return result


def store_accepted(database: Database, judged: Sequence[Accepted | Rejected | None],
                   anchor_names: frozenset[str], assume_new: bool = False) -> list[str]:
    """Store the accepted among `judged` in one transaction; their statuses, in order.
    (`assume_new`: see `store_messages`.)"""
    accepted = [item for item in judged if item.__class__ is Accepted]
    if not accepted:
        return []

    def store() -> list[str]:
        with database.write() as conn:
            return store_messages(conn, accepted, anchor_names,  # type: ignore[arg-type]
                                  assume_new).statuses

    # Stored whole or not at all, so a batch stopped by a deadlock with a tick or another
    # batch is simply stored again.
    return retry_conflicts(store, "Storing a batch of events")
