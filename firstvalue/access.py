"""Write keys for ingest and bearer tokens for the API, stored hashed (shared/DESIGN.md "Access").

Both are random secrets of 32 bytes, so a plain SHA-256 is enough to store them: there is no
password to guess, only a table that must not give the secrets away if it leaks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from firstvalue.errors import ConfigError
from firstvalue.settings import get_setting
from firstvalue.store.database import Database

ROLES = ("admin", "csm", "viewer")
CHANGERS = ("admin", "csm")  # the roles that may change anything; a viewer only reads


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_write_key(database: Database, name: str, now: int) -> str:
    key = "fvw_" + secrets.token_urlsafe(32)
    with database.write() as conn:
        conn.execute(sa.text("INSERT INTO write_keys (key_hash, name, created_at) "
                             "VALUES (:h, :n, :at)"), {"h": hash_secret(key), "n": name, "at": now})
    return key


def create_api_token(database: Database, name: str, role: str, now: int) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    token = "fvt_" + secrets.token_urlsafe(32)
    with database.write() as conn:
        conn.execute(sa.text("INSERT INTO api_tokens (token_hash, role, name, created_at) "
                             "VALUES (:h, :r, :n, :at)"),
                     {"h": hash_secret(token), "r": role, "n": name, "at": now})
    return token


def environment_write_keys() -> list[str]:
    raw = get_setting("write_keys") or ""
    return [key.strip() for key in raw.split(",") if key.strip()]


def check_write_key(database: Database, key: str) -> bool:
    if not key:
        return False
    offered = key.encode("utf-8", "surrogatepass")  # bytes: any character, no error
    if any(hmac.compare_digest(offered, known.encode("utf-8", "surrogatepass"))
           for known in environment_write_keys()):
        return True
    with database.engine.connect() as conn:
        found = conn.execute(sa.text("SELECT 1 FROM write_keys WHERE key_hash = :h"),
                             {"h": hash_secret(key)}).first()
    return found is not None


def check_api_token(database: Database, token: str) -> Principal | None:
    if not token:
        return None
    with database.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT name, role FROM api_tokens WHERE token_hash = :h"),
                           {"h": hash_secret(token)}).first()
    return Principal(row[0], row[1]) if row else None


def stored_write_key_count(database: Database) -> int:
    with database.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM write_keys")).scalar() or 0)
