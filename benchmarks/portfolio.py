"""The portfolio page benchmark: `python benchmarks/portfolio.py` (see benchmarks/README.md).

Builds (once; kept in benchmarks/data/ and reused, `--fresh` builds it again) a SQLite store of
the benchmark data set with a team roster, so that the tick routes every account to an owner;
starts `firstvalue serve --tick-seconds 0` on a free loopback port; logs in to the dashboard as
a viewer created with `firstvalue users add`; then times GETs of the portfolio page, sorted,
filtered by owner and searched, and prints for each the first (cold) request, p50, p95 and max
of the rest, and the page's size.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from dataset import ensure_dataset  # noqa: E402
from report import DATA, NOW, prepare_store  # noqa: E402

from firstvalue.clock import isoformat  # noqa: E402

STARTUP_SECONDS = 60
# Tier 1 accounts go to implementation managers, tier 2 to the CSM pool, tier 3 to nobody
# (the default playbook's ownership); the capacities leave no account waiting.
ROSTER = (("im-ada", "implementation_manager", "Europe/Berlin"),
          ("im-bo", "implementation_manager", "America/New_York"),
          ("csm-cy", "csm", "Europe/London"),
          ("csm-dee", "csm", "America/Los_Angeles"),
          ("csm-eve", "csm", "Asia/Tokyo"),
          ("csm-fay", "csm", "Australia/Sydney"))
CAPACITY = 5_000


class BenchmarkError(Exception):
    """Raised when the benchmark cannot go on: the CLI, the server or the login failed."""


def main() -> None:
    args = _parse_args()
    path = ensure_dataset(args.data, args.accounts, args.events)
    store = args.data / f"bench-portfolio-{args.accounts}a-{args.events}e.db"
    if args.fresh or not store.exists():
        prepare_store(path, store, before_tick=_add_roster)
    url = f"sqlite:///{store}"
    owner = _first_owner(store)
    password = secrets.token_urlsafe(18)
    viewer = f"bench-viewer-{secrets.token_hex(3)}"
    _firstvalue(url, "users", "add", viewer, "--role", "viewer", "--password-stdin",
                stdin=password)

    paths = ["/portfolio", "/portfolio?sort=risk", f"/portfolio?owner={owner}",
             "/portfolio?q=acme&page=3"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory, _Server(url, Path(directory)) as base_url:
        figures = _measure(base_url, viewer, password, paths, args.requests)
    load_after = os.getloadavg()

    print(f"portfolio pages on {args.accounts:,} accounts ({store.name}), {args.requests} GETs "
          "each: the first (cold), then p50 / p95 / max of the rest")
    for page_path, (cold, p50, p95, most, size) in zip(paths, figures, strict=True):
        print(f"  {page_path:32} cold {cold:7.1f} ms   p50 {p50:7.1f}   p95 {p95:7.1f}   "
              f"max {most:7.1f} ms   {size:,} bytes")
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}"
          .format(*load_before, *load_after))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--requests", type=int, default=30, help="GETs of each page")
    parser.add_argument("--fresh", action="store_true", help="import and tick again")
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2: the first is the cold one")
    return args


def _add_roster(url: str) -> None:
    for handle, role, timezone in ROSTER:
        _firstvalue(url, "team", "add", handle, "--email", f"{handle}@example.com",
                    "--role", role, "--capacity", str(CAPACITY), "--timezone", timezone,
                    "--now", isoformat(NOW) or "")


def _first_owner(store: Path) -> str:
    with sqlite3.connect(store) as conn:
        (owner,) = conn.execute("SELECT MIN(owner) FROM assignments").fetchone()
    if owner is None:
        raise BenchmarkError(f"no account in {store} has an owner; build it again with --fresh")
    return owner


def _firstvalue(url: str, *arguments: str, stdin: str | None = None) -> str:
    command = [sys.executable, "-m", "firstvalue", "--db", url, *arguments]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                            env=_environment())
    if result.returncode != 0:
        raise BenchmarkError(f"`firstvalue {' '.join(arguments)}` exited with "
                             f"{result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def _environment() -> dict[str, str]:
    # FIRSTVALUE_DB and friends in the caller's shell must not redirect the server or the CLI.
    return {key: value for key, value in os.environ.items() if not key.startswith("FIRSTVALUE_")}


class _Server:
    """`firstvalue serve` on a free loopback port, for the length of a `with` block."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.log = directory / "serve.log"

    def __enter__(self) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "firstvalue", "--db", self.url, "serve",
                   "--host", "127.0.0.1", "--port", str(port), "--tick-seconds", "0"]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(command, env=_environment(), stdout=output,
                                            stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        try:
            self._wait_until_healthy(base_url)
        except BaseException:
            self.__exit__()
            raise
        return base_url

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _wait_until_healthy(self, base_url: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with httpx.Client(trust_env=False, timeout=1) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise BenchmarkError(f"firstvalue serve exited with "
                                         f"{self.process.returncode}:\n{self.log.read_text()}")
                try:
                    if http.get(base_url + "/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise BenchmarkError(f"firstvalue serve did not answer /health within "
                             f"{STARTUP_SECONDS} s:\n{self.log.read_text()}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _log_in(http: httpx.Client, name: str, password: str) -> None:
    """Log in through the login form: its CSRF token and cookie first, then the POST."""
    form = http.get("/login")
    if form.status_code != 200:
        raise BenchmarkError(f"GET /login answered {form.status_code}, not 200; is the "
                             f"dashboard in this build?\n{form.text[:500]}")
    token = _csrf_token(form.text)
    if token is None:
        raise BenchmarkError("GET /login has no hidden `csrf_token` field:\n" + form.text[:500])

    response = http.post("/login", data={"name": name, "password": password,
                                         "csrf_token": token})
    if response.status_code != 303 or not response.headers.get_list("set-cookie"):
        raise BenchmarkError(f"logging in as {name!r} answered {response.status_code} "
                             f"(location {response.headers.get('location')!r}, cookies "
                             f"{response.headers.get_list('set-cookie')!r}); expected a 303 "
                             f"redirect that sets a session cookie:\n{response.text[:500]}")


def _csrf_token(html: str) -> str | None:
    finder = _HiddenFieldFinder("csrf_token")
    finder.feed(html)
    return finder.value


class _HiddenFieldFinder(HTMLParser):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = dict(attrs)
        if tag == "input" and fields.get("name") == self.name and self.value is None:
            self.value = fields.get("value")


def _measure(base_url: str, name: str, password: str, paths: list[str],
             requests: int) -> list[tuple[float, float, float, float, int]]:
    with httpx.Client(base_url=base_url, trust_env=False, timeout=60) as http:
        _log_in(http, name, password)
        return [_time_page(http, path, requests) for path in paths]


def _time_page(http: httpx.Client, path: str,
               requests: int) -> tuple[float, float, float, float, int]:
    """Cold, p50, p95 and max in ms, and the size in bytes of the last response."""
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        response = http.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise BenchmarkError(f"GET {path} answered {response.status_code}, not 200 "
                                 f"(location {response.headers.get('location')!r}):\n"
                                 f"{response.text[:500]}")

    warm = timings[1:]
    p95 = statistics.quantiles(warm, n=20, method="inclusive")[-1] if len(warm) > 1 else warm[0]
    return timings[0], statistics.median(warm), p95, max(warm), len(response.content)


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:
        sys.exit(f"portfolio benchmark: {error}")
