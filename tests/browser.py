"""Helpers for the browser tests: Debian's Chromium, the served demo, screenshots and axe.

The browser tests drive Debian's `chromium` package through Playwright (browsers cannot be
downloaded here, so Playwright launches it by its path) against `firstvalue serve` running as a
real process on a loopback port. The fixtures built on these helpers are in
`tests/browser_fixtures.py`; what a test leaves behind for a person to look at (screenshots, axe
results) goes to `test-results/` at the repository root, which git ignores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "test-results"
SCREENSHOTS = RESULTS / "screenshots"
AXE_RESULTS = RESULTS / "axe"

CHROMIUM_VARIABLE = "FIRSTVALUE_TEST_CHROMIUM"
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 900}
STARTUP_SECONDS = 30
BLOCKING_IMPACTS = ("serious", "critical")
TARGETS_SHOWN = 3

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ServedDemo:
    """A demo workspace served by `firstvalue serve` on a loopback port."""

    base_url: str
    db: Path
    log: Path

    def url(self, path: str) -> str:
        return self.base_url + path


@dataclass(frozen=True)
class DashboardUser:
    name: str
    role: str
    password: str


def chromium_executable() -> str:
    """Debian's Chromium, or the one named by FIRSTVALUE_TEST_CHROMIUM; fails the test if absent.

    A missing browser fails rather than skips: in CI a skip would pass a run that tested no page.
    """
    configured = os.environ.get(CHROMIUM_VARIABLE)
    candidate = Path(configured) if configured else DEBIAN_CHROMIUM
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)

    where = f"{CHROMIUM_VARIABLE}={configured!r}" if configured else f"{DEBIAN_CHROMIUM}"
    pytest.fail(f"no Chromium executable at {where}: the browser tests drive Debian's Chromium; "
                f"install it with `apt-get install chromium`, or point {CHROMIUM_VARIABLE} at "
                "a Chromium binary", pytrace=False)


def chromium_arguments() -> list[str]:
    # Chromium refuses to start its sandbox as root, and CI runs as root.
    return ["--no-sandbox"] if os.geteuid() == 0 else []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sqlite_url(db: Path) -> str:
    return f"sqlite:///{db}"


def child_environment() -> dict[str, str]:
    # A developer's FIRSTVALUE_DB or FIRSTVALUE_PLAYBOOK must not reach the processes a test starts.
    return {key: value for key, value in os.environ.items() if not key.startswith("FIRSTVALUE_")}


def run_firstvalue(arguments: Sequence[str], *, cwd: Path | None = None,
                   stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI with this interpreter (`python -m firstvalue ...`); fail with its output."""
    command = [sys.executable, "-m", "firstvalue", *arguments]
    result = subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True,
                            env=child_environment(), timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}:\n"
                    f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}", pytrace=False)
    return result


def build_demo(directory: Path, accounts: int) -> Path:
    """Build a demo workspace of `accounts` sample accounts in `directory`; return its database."""
    db = directory / "demo.db"
    run_firstvalue(["demo", "--accounts", str(accounts), "--db", str(db),
                    "--charts", str(directory / "charts")], cwd=directory)
    return db


def start_server(db: Path, directory: Path, settings: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, ServedDemo]:
    """Start `firstvalue serve` on `db` with no scheduler ticks (and these FIRSTVALUE_
    settings); return once /health answers."""
    port = free_port()
    log = directory / "serve.log"
    command = [sys.executable, "-m", "firstvalue", "--db", sqlite_url(db), "serve",
               "--host", "127.0.0.1", "--port", str(port), "--tick-seconds", "0"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=directory,
                                   env={**child_environment(), **(settings or {})},
                                   stdout=output, stderr=subprocess.STDOUT)
    served = ServedDemo(base_url=f"http://127.0.0.1:{port}", db=db, log=log)
    try:
        wait_until_healthy(served, process)
    except BaseException:
        stop_server(process)
        raise
    return process, served


def wait_until_healthy(served: ServedDemo, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    with httpx.Client(trust_env=False, timeout=1) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"firstvalue serve exited with {process.returncode} before /health "
                            f"answered; its output:\n{served.log.read_text()}", pytrace=False)
            try:
                if http.get(served.url("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    pytest.fail(f"firstvalue serve did not answer GET /health with 200 within {STARTUP_SECONDS} s;"
                f" its output:\n{served.log.read_text()}", pytrace=False)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def add_user(db: Path, name: str, role: str, password: str, team: str | None = None) -> None:
    """Create a dashboard user through the CLI, the password passed on stdin."""
    # No trailing newline: the password is exactly what is sent, whether the command reads a
    # line or the whole of stdin.
    run_firstvalue(["--db", sqlite_url(db), "users", "add", name, "--role", role,
                    "--password-stdin", *(["--team", team] if team else [])],
                   stdin=password, timeout=60)


def log_in(page: Page, served: ServedDemo, user: DashboardUser) -> None:
    """Log in through the dashboard's login form (fields `name` and `password`)."""
    page.goto(served.url("/login"))
    page.fill('input[name="name"]', user.name)
    page.fill('input[name="password"]', user.password)
    with page.expect_navigation():
        page.click('form [type="submit"]')


def save_screenshot(page: Page, name: str) -> Path:
    """Write a full-page PNG of `page` to test-results/screenshots/<name>.png."""
    path = SCREENSHOTS / f"{_checked_name(name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_accessible(page: Page, name: str,
                      impacts: Sequence[str] = BLOCKING_IMPACTS) -> dict[str, Any]:
    """Run axe on `page`; fail listing every violation of the given impacts.

    The full axe result is written to test-results/axe/<name>.json whatever the outcome, and
    returned.
    """
    results = Axe().run(page).response
    path = AXE_RESULTS / f"{_checked_name(name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")

    blocking = [v for v in results["violations"] if v.get("impact") in impacts]
    if blocking:
        listed = "\n".join(_describe_violation(violation) for violation in blocking)
        pytest.fail(f"axe found {len(blocking)} {' or '.join(impacts)} accessibility "
                    f"violation(s) on {name!r} ({page.url}); full result in {path}:\n{listed}",
                    pytrace=False)
    return results


def _describe_violation(violation: dict[str, Any]) -> str:
    nodes = violation.get("nodes", [])
    targets = [_target_text(node.get("target", [])) for node in nodes[:TARGETS_SHOWN]]
    more = f" and {len(nodes) - TARGETS_SHOWN} more" if len(nodes) > TARGETS_SHOWN else ""
    return (f"- {violation['id']} ({violation.get('impact')}): {violation.get('help')} "
            f"[{violation.get('helpUrl')}]\n    at {', '.join(targets)}{more}")


def _target_text(target: list[Any]) -> str:
    # A target is a list of selectors, one per frame or shadow root on the way to the node;
    # a step into a shadow root is itself a list.
    steps = [" >>> ".join(step) if isinstance(step, list) else str(step) for step in target]
    return " > ".join(steps)


def _checked_name(name: str) -> str:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"result name {name!r} must be letters, digits, '.', '_' or '-' "
                         "(it becomes a file name), e.g. 'portfolio-sorted-by-risk'")
    return name
