"""Fixtures for the browser tests, loaded by tests/conftest.py.

- `browser`: Debian's Chromium, launched when a test first needs it and shared by the tests
  that follow, closed when the next test needs no browser (see `SharedBrowser` for why).
- `page`: a fresh browser context and page per test, 1280x900; its screenshot is saved to
  test-results/screenshots/ when the test fails.
- `served_demo`: a 60-account demo workspace served by `firstvalue serve` on a loopback port,
  built once per session; it has `base_url`, `db` and `url(path)`.
- `dashboard_users`: an admin, a CSM (`ana`, on the demo's team roster) and a viewer, created
  in the served demo through `firstvalue users add`, keyed by role.
- `vega_bundle`: the Vega-Lite JavaScript bundle of vl-convert-python, built once per session.

A test that takes any of these is marked `browser`. The demo is built once per run (the
first xdist worker to need it builds it, under a file lock) and each worker serves a copy.
"""

from __future__ import annotations

import fcntl
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.browser import (
    VIEWPORT,
    DashboardUser,
    ServedDemo,
    add_user,
    build_demo,
    chromium_arguments,
    chromium_executable,
    save_screenshot,
    start_server,
    stop_server,
)

BROWSER_FIXTURES = frozenset({"browser", "page", "served_demo", "dashboard_users", "vega_bundle"})
DEMO_ACCOUNTS = 60
DEMO_CSM = "ana"  # a member of the demo's team roster, so that the CSM has accounts of their own
_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BROWSER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


class SharedBrowser:
    """Chromium for this process's tests: launched when a test first needs it, closed when the
    next test does not.

    Not a session fixture, though it is shared like one: between its calls Playwright's sync API
    leaves its event loop marked as running on the main thread, so while it is alive any other
    test in the process that calls `asyncio.run()` (or a library that does) fails.
    """

    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def get(self) -> Browser:
        if self._browser is None:
            executable = chromium_executable()
            playwright = sync_playwright().start()
            try:
                self._browser = playwright.chromium.launch(executable_path=executable,
                                                           args=chromium_arguments())
            except BaseException:
                playwright.stop()
                raise
            self._playwright = playwright
        return self._browser

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None


_SHARED_BROWSER = SharedBrowser()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # trylast: after the test's own fixtures (its page and context) are torn down.
    if nextitem is None or not _needs_browser(nextitem):
        _SHARED_BROWSER.close()


def pytest_sessionfinish() -> None:
    _SHARED_BROWSER.close()


@pytest.fixture
def browser() -> Browser:
    return _SHARED_BROWSER.get()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    yield page
    if request.node.stash.get(_CALL_FAILED, False):
        save_screenshot(page, f"failed-{_file_name(request.node.name)}")
    context.close()


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedDemo]:
    directory = tmp_path_factory.mktemp("served-demo")
    db = directory / "demo.db"
    shutil.copy(_built_demo(tmp_path_factory), db)
    process, served = start_server(db, directory, {"FIRSTVALUE_REFRESH_SECONDS": "1"})
    yield served
    stop_server(process)


def _built_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's database, built once for the whole run: under xdist every worker's temporary
    folder is beside the others', and the first worker to take the lock builds it there while
    the others wait, then each serves a copy of its own."""
    shared = tmp_path_factory.getbasetemp().parent / "served-demo-build"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = shared / "demo.db"
        if not built.exists():
            build_demo(shared, DEMO_ACCOUNTS)
        return built


@pytest.fixture(scope="session")
def dashboard_users(served_demo: ServedDemo) -> dict[str, DashboardUser]:
    users = {role: DashboardUser(name, role, secrets.token_urlsafe(18))
             for role, name in (("admin", "admin"), ("csm", DEMO_CSM), ("viewer", "viewer"))}
    for user in users.values():
        add_user(served_demo.db, user.name, user.role, user.password,
                 DEMO_CSM if user.role == "csm" else None)
    return users


@pytest.fixture(scope="session")
def vega_bundle() -> str:
    import vl_convert

    return vl_convert.javascript_bundle()


def _needs_browser(item: pytest.Item) -> bool:
    return not {"browser", "page"}.isdisjoint(getattr(item, "fixturenames", ()))


def _file_name(test_name: str) -> str:
    # Parametrised test names carry brackets and other characters a file name should not.
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in test_name)
