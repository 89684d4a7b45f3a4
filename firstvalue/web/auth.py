"""Dashboard users, their passwords and sessions, and the CSRF tokens of their forms.

Passwords are hashed with scrypt (a salt of their own each); a session is a random token in an
HttpOnly cookie, stored as its SHA-256 only. A form's CSRF token is an HMAC of the session's
token, so it needs no storage and is worthless without the cookie it belongs to; the login form,
which comes before any session, gets the same from a short-lived cookie of its own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from firstvalue.access import CHANGERS, ROLES, hash_secret
from firstvalue.errors import ConfigError, LoginBusy
from firstvalue.settings import get_int_setting
from firstvalue.store.database import Database

HOUR = 3_600_000_000
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
MAX_NAME = 64
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
# A password check takes 16 MiB and a core for about 50 ms, and the login throttle counts per
# name: logins for ever new names would otherwise run as many checks at once as the server has
# threads. One at a time, and a login waits this long for its turn before it is refused.
_password_checks = threading.BoundedSemaphore(1)
LOGIN_WAIT_SECONDS = 5.0
LOGINS_IN_FLIGHT = 8  # logins checked or waiting at once, per server process; more get a 503


@dataclass(frozen=True)
class WebUser:
    name: str
    role: str
    team_handle: str | None
    session_token: str

    @property
    def csrf_token(self) -> str:
        return csrf_for(self.session_token)

    @property
    def can_change(self) -> bool:
        return self.role in CHANGERS


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)
    return "scrypt${n}${r}${p}$".format(**SCRYPT) + _b64(salt) + "$" + _b64(digest)


def password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        expected = base64.urlsafe_b64decode(digest + "==")
        offered = hashlib.scrypt(password.encode("utf-8", "surrogatepass"),
                                 salt=base64.urlsafe_b64decode(salt + "=="),
                                 n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(offered, expected)


def check_new_user(name: str, role: str, password: str) -> None:
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "._@-" for c in name):
        raise ConfigError(f"user name {name!r}: use 1 to {MAX_NAME} letters, digits and . _ @ -")
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not a role; use one of {', '.join(ROLES)}")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError(f"the password has {len(password)} characters; use "
                          f"{MIN_PASSWORD} to {MAX_PASSWORD}")


def save_user(database: Database, name: str, role: str, password: str,
              team_handle: str | None, now: int) -> bool:
    """Add the user, or change their role, password and team member; True when new."""
    check_new_user(name, role, password)
    with database.write() as conn:
        known = team_handle is None or conn.execute(sa.text(
            "SELECT 1 FROM team_members WHERE handle = :h"), {"h": team_handle}).first()
        if not known:
            raise ConfigError(f"no team member {team_handle!r}; add them first with `firstvalue "
                              "team add`, or see `firstvalue team list`")
        found = conn.execute(sa.text("SELECT 1 FROM users WHERE name = :n"), {"n": name}).first()
        params = {"n": name, "r": role, "h": hash_password(password), "t": team_handle,
                  "at": now}
        if found:
            conn.execute(sa.text("UPDATE users SET role = :r, password_hash = :h, "
                                 "team_handle = :t WHERE name = :n"), params)
            # A changed password or role ends the user's sessions.
            conn.execute(sa.text("DELETE FROM web_sessions WHERE user_name = :n"), params)
        else:
            conn.execute(sa.text("INSERT INTO users (name, role, password_hash, team_handle, "
                                 "created_at) VALUES (:n, :r, :h, :t, :at)"), params)
    return not found


def remove_user(database: Database, name: str) -> bool:
    with database.write() as conn:
        conn.execute(sa.text("DELETE FROM web_sessions WHERE user_name = :n"), {"n": name})
        return conn.execute(sa.text("DELETE FROM users WHERE name = :n"),
                            {"n": name}).rowcount == 1


def list_users(database: Database) -> list[dict[str, object]]:
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, role, team_handle, created_at FROM users "
                                    "ORDER BY name")).all()
    return [{"name": r.name, "role": r.role, "team_handle": r.team_handle} for r in rows]


def log_in(database: Database, name: str, password: str, now: int) -> str | None:
    """A new session's token for a right name and password, else None (which of the two was
    wrong is not told). Unknown names cost a hash too, so timing tells nothing either.
    Raises LoginBusy when other logins kept the password check busy for `LOGIN_WAIT_SECONDS`."""
    with database.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT password_hash FROM users WHERE name = :n"),
                           {"n": name}).first()
    if not _password_checks.acquire(timeout=LOGIN_WAIT_SECONDS):
        raise LoginBusy("other logins are being checked; try again in a few seconds")
    try:
        matches = password_matches(password, _dummy_hash() if row is None
                                   else row.password_hash)
    finally:
        _password_checks.release()
    if row is None or not matches:
        return None
    token = secrets.token_urlsafe(32)
    hours = get_int_setting("session_hours")
    with database.write() as conn:
        conn.execute(sa.text("DELETE FROM web_sessions WHERE expires_at <= :now"), {"now": now})
        conn.execute(sa.text("INSERT INTO web_sessions (token_hash, user_name, created_at, "
                             "expires_at) VALUES (:h, :u, :at, :exp)"),
                     {"h": hash_secret(token), "u": name, "at": now, "exp": now + hours * HOUR})
    return token


def session_user(database: Database, token: str | None, now: int) -> WebUser | None:
    if not token or len(token) > 256:
        return None
    with database.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT u.name, u.role, u.team_handle FROM web_sessions s JOIN users u "
            "ON u.name = s.user_name WHERE s.token_hash = :h AND s.expires_at > :now"),
            {"h": hash_secret(token), "now": now}).first()
    return WebUser(row.name, row.role, row.team_handle, token) if row else None


def log_out(database: Database, token: str) -> None:
    with database.write() as conn:
        conn.execute(sa.text("DELETE FROM web_sessions WHERE token_hash = :h"),
                     {"h": hash_secret(token)})


def csrf_for(secret: str) -> str:
    return _b64(hmac.new(secret.encode("utf-8", "surrogatepass"), b"firstvalue csrf",
                         hashlib.sha256).digest())


def csrf_matches(secret: str | None, offered: str | None) -> bool:
    if not secret or not offered:
        return False
    return hmac.compare_digest(csrf_for(secret).encode(),
                               offered.encode("utf-8", "surrogatepass"))


class LoginThrottle:
    """At most `limit` login attempts per user name in `window` seconds, until one succeeds;
    then the name is refused until the window has passed, whatever the password (against
    guessing). An attempt counts before its password is checked, so guesses sent all at once
    count too."""

    def __init__(self, limit: int = 5, window: float = 900.0, names: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.names = names
        self._attempts: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def attempt(self, name: str) -> bool:
        """Count an attempt for `name`; False (and not counted) when the name is refused."""
        name = name[:MAX_NAME + 1]  # a longer name is no user's: it needs no more room
        with self._lock:
            recent = self._recent(name)
            if len(recent) >= self.limit:
                return False
            recent.append(time.monotonic())
            if len(self._attempts) > self.names:
                self._forget()
            return True

    def withdraw(self, name: str) -> None:
        """Take back the latest attempt counted for `name` (its password was never checked)."""
        with self._lock:
            recent = self._attempts.get(name[:MAX_NAME + 1])
            if recent:
                recent.pop()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._attempts.pop(name[:MAX_NAME + 1], None)

    def _recent(self, name: str) -> list[float]:
        cutoff = time.monotonic() - self.window
        recent = [at for at in self._attempts.get(name, []) if at > cutoff]
        self._attempts[name] = recent
        return recent

    def _forget(self) -> None:
        """Bounded memory: names whose attempts are past go first, then the oldest names not
        refused now. A refused name is never forgotten early."""
        cutoff = time.monotonic() - self.window
        for name in [n for n, times in self._attempts.items() if all(t <= cutoff for t in times)]:
            del self._attempts[name]
        extra = len(self._attempts) - self.names
        if extra > 0:
            for name in [n for n, times in self._attempts.items()
                         if len(times) < self.limit][:extra]:
                del self._attempts[name]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@functools.cache
def _dummy_hash() -> str:
    """What an unknown name's password is checked against: made on first use, not when the
    module is imported (a scrypt hash costs every CLI command and server start 50 ms)."""
    return hash_password("not a password of anyone's", b"firstvalue-dummy")
