"""A dashboard over a small simulated store: its client, logins and form tokens."""

from __future__ import annotations

import re
import warnings

from firstvalue.web.auth import save_user

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: F401 (re-exported for the tests)

PASSWORDS = {"admin": "admin-password-1", "csm": "csm-password-12", "viewer": "viewer-pass-123"}


def add_users(database, now: int, team: dict[str, str] | None = None) -> None:
    for role, password in PASSWORDS.items():
        save_user(database, role, role, password, (team or {}).get(role), now)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def log_in(client, role: str) -> str:
    """Log `client` in as the user of that role; the CSRF token of its session's forms."""
    page = client.get("/login")
    assert page.status_code == 200
    answer = client.post("/login", data={"csrf_token": csrf_of(page.text), "name": role,
                                         "password": PASSWORDS[role], "next": "/portfolio"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/portfolio"
    return csrf_of(client.get("/portfolio").text)
