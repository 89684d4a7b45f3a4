"""Finding the contact behind an email address (calendar invitees, email recipients)."""

from __future__ import annotations

import hashlib

import msgspec
import sqlalchemy as sa

from firstvalue.store.traits import plain_traits


def contact_ids(conn: sa.Connection, emails: set[str]) -> dict[str, str]:
    """The user id of each address, by the contacts' `email` trait (case-insensitive). An
    address no contact has yet gets a pseudonymous id derived from it, so its events wait,
    held, until an `identify` or `group` call makes that user known, and no address is kept."""
    found: dict[str, str] = {}
    for email in sorted({e.strip().lower() for e in emails if e}):
        pattern = "%" + email.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = conn.execute(sa.text(
            "SELECT user_id, traits FROM contacts WHERE LOWER(traits) LIKE :p ESCAPE '\\' "
            "ORDER BY user_id"), {"p": pattern}).all()
        for user_id, traits in rows:
            value = plain_traits(msgspec.json.decode(traits)).get("email")
            if isinstance(value, str) and value.strip().lower() == email:
                found[email] = user_id
                break
        else:
            found[email] = pseudonymous_id(email)
    return found


def pseudonymous_id(email: str) -> str:
    return "email-" + hashlib.blake2b(email.strip().lower().encode(), digest_size=10).hexdigest()
