"""The dashboard's pages and forms, served by the same app as the API (docs/dashboard.md).

Every page is plain HTML that works without script: filters are GET forms, changes are POST
forms carrying a CSRF token. A little script of our own (static/app.js) draws the charts from
the Vega-Lite specs in the page and reloads a page when the store has changed under it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from typing import Any

import jinja2
import markupsafe
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from firstvalue.actions.channels import unset_channels
from firstvalue.clock import from_micros
from firstvalue.errors import LoginBusy
from firstvalue.settings import get_int_setting, get_setting
from firstvalue.web import auth
from firstvalue.web.portfolio import MARK_LABELS, Portfolio

SESSION_COOKIE = "fv_session"
LOGIN_COOKIE = "fv_login"
FORM_BYTES = 64 * 1024
STAMP_SECONDS = 1.0
# Scripts and styles come from this app only. Vega compiles its expressions with `Function`
# and sets inline styles on what it draws, so the chart pages alone also allow 'unsafe-eval'
# for scripts and 'unsafe-inline' for styles.
CSP = ("default-src 'self'; script-src 'self'{eval}; style-src 'self'{inline}; "
       "img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class Refused(Exception):
    """A request the dashboard answers with an error page: its status and what to do."""

    def __init__(self, status: int, title: str, message: str, back: str | None = None) -> None:
        self.status = status
        self.title = title
        self.message = message
        self.back = back  # the page to go back to, when not the portfolio


class Dashboard:
    def __init__(self, context: Any) -> None:
        self.context = context
        self.database = context.database
        self.portfolio = Portfolio(context.database)
        self.throttle = auth.LoginThrottle()
        self.logins_in_flight = 0  # changed only on the event loop's thread
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("firstvalue.web", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self.templates.filters["when"] = _when
        self.templates.filters["spec"] = _spec_json
        self.templates.filters["code"] = _code_spans
        from firstvalue.web.views import account_path

        self.templates.globals["account_url"] = account_path
        self.templates.globals["MARK_LABELS"] = MARK_LABELS
        self.templates.globals["unset_channels"] = unset_channels
        self._bundle: bytes | None = None
        self._bundle_lock = threading.Lock()
        self._report: tuple[str, dict[str, Any]] | None = None
        self._stamp: tuple[float, str] | None = None
        self._stamp_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self.version_problems: dict[str, list[Any]] = {}  # playbook version -> its check

    @property
    def now(self) -> int:
        return self.context.clock()

    # --- who is asking -------------------------------------------------------------------

    def user(self, request: Request) -> auth.WebUser | None:
        return auth.session_user(self.database, request.cookies.get(SESSION_COOKIE), self.now)

    def require(self, request: Request) -> auth.WebUser:
        user = self.user(request)
        if user is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.method != "GET":
                target = "/portfolio"  # a form's address answers only its POST
            raise Redirect("/login?" + urllib.parse.urlencode({"next": target}))
        return user

    async def form(self, request: Request, user: auth.WebUser | None,
                   change: bool = True) -> dict[str, str]:
        """The posted form, once its CSRF token is checked, and, for a change, the role."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(415, "Not a form", f"The request's body is {kind or 'untyped'!r}; "
                          "the dashboard takes its own forms only "
                          "(application/x-www-form-urlencoded).")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_BYTES:
                raise Refused(413, "Form too large", f"The form is over {FORM_BYTES // 1024} "
                              "KiB; send less text.")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                           strict_parsing=False, max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            raise Refused(400, "Unreadable form", "The form could not be read; send it from "
                          "the page again.") from None
        fields = {key: value.replace("\x00", "") for key, value in pairs}
        secret = user.session_token if user else request.cookies.get(LOGIN_COOKIE)
        if not auth.csrf_matches(secret, fields.get("csrf_token")):
            raise Refused(403, "Form refused", "The form's CSRF token is missing or does not "
                          "belong to this session. Reload the page and send the form again.")
        if change and user is not None and not user.can_change:
            raise Refused(403, "Not allowed", f"You are logged in as a {user.role}, who can "
                          "look at everything and change nothing. Ask an admin for a csm or "
                          "admin login to make changes.")
        return fields

    # --- answers -------------------------------------------------------------------------

    def render(self, request: Request, template: str, user: auth.WebUser | None,
               status: int = 200, charts: bool = False, **values: Any) -> HTMLResponse:
        refresh = get_int_setting("refresh_seconds")
        html = self.templates.get_template(template).render(
            user=user, path=request.url.path, refresh_seconds=refresh,
            stamp=self.stamp() if user else "", charts=charts, **values)
        return secure(HTMLResponse(html, status_code=status), charts)

    def refusal(self, request: Request, refused: Refused) -> HTMLResponse:
        return self.render(request, "error.html", self.user(request), status=refused.status,
                           title=refused.title, message=refused.message, back=refused.back)

    def stamp(self) -> str:
        """A fingerprint of what the pages show: it moves when a tick, a delivery or a form
        wrote. Kept for a second, so that a busy dashboard asks the store once a second."""
        with self._stamp_lock:
            at = time.monotonic()
            if self._stamp is None or at - self._stamp[0] > STAMP_SECONDS:
                self._stamp = (at, self._read_stamp())
            return self._stamp[1]

    def forget_stamp(self) -> None:
        with self._stamp_lock:
            self._stamp = None

    def _read_stamp(self) -> str:
        with self.database.engine.connect() as conn:
            # Each query is answered from an index: this runs for every page and every poll.
            accounts = conn.execute(sa.text(
                "SELECT COUNT(*), COALESCE(SUM(evaluated_seq), 0), "
                "COALESCE(MAX(evaluated_at), 0) FROM accounts")).one()
            statuses = conn.execute(sa.text(
                "SELECT status, COUNT(*) FROM actions GROUP BY status ORDER BY status")).all()
            tasks = conn.execute(sa.text(
                "SELECT COUNT(done_at), COALESCE(MAX(done_at), 0), COALESCE(MAX(snoozed_until), "
                "0), COALESCE(MAX(id), 0) FROM actions WHERE status = 'sent' AND kind IN "
                "('task', 'in_app')")).one()
            handoffs = conn.execute(sa.text(
                "SELECT COUNT(*), COALESCE(MAX(submitted_at), 0) FROM handoffs")).one()
        text = repr((tuple(accounts), [tuple(r) for r in statuses], tuple(tasks),
                     tuple(handoffs)))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def vega_bundle(self) -> bytes:
        """Vega, Vega-Lite and Vega-Embed as one script, built by vl-convert from the packages
        it ships (nothing is fetched and nothing third-party is kept in this repository)."""
        with self._bundle_lock:
            if self._bundle is None:
                import vl_convert

                self._bundle = vl_convert.javascript_bundle().encode("utf-8")
            return self._bundle

    def report(self) -> dict[str, Any]:
        """The onboarding report, built again only when the store has changed."""
        from firstvalue.metrics.report import build_report

        stamp = self.stamp()
        with self._report_lock:
            if self._report is None or self._report[0] != stamp:
                self._report = (stamp, build_report(self.database, self.context.playbook,
                                                    self.now))
            return self._report[1]


_TICKED = re.compile(r"`([^`]+)`")


def _code_spans(text: Any) -> markupsafe.Markup:
    """A message's `backticked` words (commands, settings, fields) as code, the rest escaped:
    the messages are shared with the CLI and the API, where backticks are how they are
    written."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_TICKED.sub(r"<code>\1</code>", escaped))


def secure(response: Response, charts: bool = False) -> Response:
    response.headers["Content-Security-Policy"] = CSP.format(
        eval=" 'unsafe-eval'" if charts else "", inline=" 'unsafe-inline'" if charts else "")
    # X-Content-Type-Options and Referrer-Policy: the app's middleware sets them on every answer.
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def _secure_cookie(request: Request) -> bool:
    setting = (get_setting("secure_cookies") or "auto").lower()
    if setting in ("true", "1", "yes"):
        return True
    if setting in ("false", "0", "no"):
        return False
    return request.url.scheme == "https"


def _when(value: Any, with_time: bool = True, tz: Any = None) -> str:
    """An ISO time (or microseconds) as `2026-12-04 14:05 UTC+01:00`, in its own offset, or in
    the timezone `tz` when given."""
    if value is None or value == "":
        return "—"
    moment = from_micros(value) if isinstance(value, int) else datetime.fromisoformat(value)
    if tz is not None:
        moment = moment.astimezone(tz)
    if not with_time:
        return moment.date().isoformat()
    offset = moment.strftime("%z")
    zone = "UTC" if offset in ("+0000", "") else f"UTC{offset[:3]}:{offset[3:]}"
    return moment.strftime("%Y-%m-%d %H:%M ") + zone


def _spec_json(spec: Any) -> str:
    """JSON safe inside a <script type="application/json"> element."""
    from markupsafe import Markup

    text = json.dumps(spec, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _safe_next(target: str | None) -> str:
    """Only a path of this app: never another host (no `//evil`, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/portfolio"
    # Browsers drop tabs and line breaks from a link: "/\t/evil" would become "//evil".
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in target):
        return "/portfolio"
    return target


def install(app: FastAPI, context: Any) -> Dashboard:
    """Add the dashboard's routes to the app."""
    from firstvalue.web import views

    dashboard = Dashboard(context)
    app.state.dashboard = dashboard

    def page(handler: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Redirect as redirect:
                return secure(RedirectResponse(redirect.location, status_code=303))
            except Refused as refused:
                return await run_in_threadpool(dashboard.refusal, request, refused)
        return wrapped

    @page
    async def login_page(request: Request) -> Response:
        return await run_in_threadpool(_login_form, dashboard, request, None, "", "",
                                       _safe_next(request.query_params.get("next")))

    @page
    async def login_post(request: Request) -> Response:
        fields = await dashboard.form(request, None)
        name, password = fields.get("name", "").strip(), fields.get("password", "")
        next_path = _safe_next(fields.get("next"))
        if not dashboard.throttle.attempt(name):
            return await run_in_threadpool(
                _login_form, dashboard, request, 429, "Too many failed logins for this name; "
                "wait 15 minutes and try again.", name, next_path)
        try:
            # Logins wait for their password check in the threads every page shares: beyond a
            # few at once they are turned away here, before they take a thread.
            if dashboard.logins_in_flight >= auth.LOGINS_IN_FLIGHT:
                raise LoginBusy("too many logins are waiting for their check")
            dashboard.logins_in_flight += 1
            try:
                token = await run_in_threadpool(auth.log_in, dashboard.database, name,
                                                password, dashboard.now)
            finally:
                dashboard.logins_in_flight -= 1
        except LoginBusy:
            dashboard.throttle.withdraw(name)
            busy = await run_in_threadpool(
                _login_form, dashboard, request, 503, "Too many logins are being checked at "
                "once; try again in a few seconds.", name, next_path)
            busy.headers["Retry-After"] = str(max(1, round(auth.LOGIN_WAIT_SECONDS)))
            return busy
        if token is None:
            return await run_in_threadpool(
                _login_form, dashboard, request, 401, "That name and password do not match "
                "a user. Users are added with `firstvalue users add`.", name, next_path)
        dashboard.throttle.succeeded(name)
        response = secure(RedirectResponse(next_path, status_code=303))
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                            secure=_secure_cookie(request), path="/",
                            max_age=get_int_setting("session_hours") * 3600)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @page
    async def logout(request: Request) -> Response:
        user = dashboard.user(request)
        if user is not None:
            await dashboard.form(request, user, change=False)
            await run_in_threadpool(auth.log_out, dashboard.database, user.session_token)
        response = secure(RedirectResponse("/login", status_code=303))
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @page
    async def root(request: Request) -> Response:
        dashboard.require(request)
        raise Redirect("/portfolio")

    @page
    async def stamp(request: Request) -> Response:
        dashboard.require(request)
        value = await run_in_threadpool(dashboard.stamp)
        return secure(Response(json.dumps({"stamp": value}), media_type="application/json"))

    @page
    async def vega(request: Request) -> Response:
        dashboard.require(request)
        body = await run_in_threadpool(dashboard.vega_bundle)
        response = Response(body, media_type="text/javascript")
        secure(response)
        response.headers["Cache-Control"] = "private, max-age=86400"
        return response

    def handler(view: Callable[..., Any], form: bool = False) -> Callable[..., Any]:
        """A page (GET), or with `form` a change posted from one: its fields read, and a
        user who may change things required."""
        @page
        async def run(request: Request) -> Response:
            user = dashboard.require(request)
            fields = await dashboard.form(request, user) if form else None
            try:
                return await run_in_threadpool(view, dashboard, request, user, fields)
            finally:
                if form:
                    dashboard.forget_stamp()  # the page it returns to shows the change
        return run

    routes = [
        ("/login", login_page, ["GET"]),
        ("/login", login_post, ["POST"]),
        ("/logout", logout, ["POST"]),
        ("/", root, ["GET"]),
        ("/ui/stamp", stamp, ["GET"]),
        ("/static/vega.js", vega, ["GET"]),
        ("/portfolio", handler(views.portfolio_page), ["GET"]),
        ("/work", handler(views.work_page), ["GET"]),
        ("/funnel", handler(views.funnel_page), ["GET"]),
        ("/playbook", handler(views.playbook_page), ["GET"]),
        ("/deliveries", handler(views.deliveries_page), ["GET"]),
        ("/deliveries/retry", handler(views.retry_delivery, form=True), ["POST"]),
        ("/actions/send", handler(views.send_action, form=True), ["POST"]),
        ("/actions/cancel", handler(views.cancel_action, form=True), ["POST"]),
        ("/tasks/done", handler(views.complete_task, form=True), ["POST"]),
        ("/tasks/snooze", handler(views.snooze_task, form=True), ["POST"]),
        ("/handoff/{account_id:path}", handler(views.handoff_page), ["GET"]),
        ("/handoff/{account_id:path}", handler(views.handoff_post, form=True), ["POST"]),
        ("/accounts/{account_id:path}", handler(views.account_page), ["GET"]),
        # The same, for ids that are all dots (see views.account_path).
        ("/handoff", handler(views.handoff_page), ["GET"]),
        ("/handoff", handler(views.handoff_post, form=True), ["POST"]),
        ("/accounts", handler(views.account_page), ["GET"]),
    ]
    for path, endpoint, methods in routes:
        app.add_api_route(path, endpoint, methods=methods + (["HEAD"] if methods == ["GET"]
                                                             else []),
                          include_in_schema=False)
    app.add_api_route("/favicon.ico", _no_icon, methods=["GET"], include_in_schema=False)
    for name in ("app.css", "app.js"):
        app.add_api_route(f"/static/{name}", _static(name), methods=["GET"],
                          include_in_schema=False)
    return dashboard


async def _no_icon(request: Request) -> Response:
    return secure(Response(status_code=204))


def _static(name: str) -> Callable[..., Any]:
    from importlib.resources import files

    body = files("firstvalue.web").joinpath("static", name).read_bytes()
    media = "text/css" if name.endswith(".css") else "text/javascript"

    async def serve(request: Request) -> Response:
        response = secure(Response(body, media_type=media))
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response
    return serve


def _login_form(dashboard: Dashboard, request: Request, status: int | None, error: str,
                name: str, next_path: str) -> Response:
    import secrets

    secret = request.cookies.get(LOGIN_COOKIE)
    if not secret or len(secret) > 100:
        secret = secrets.token_urlsafe(24)
    response = dashboard.render(request, "login.html", None, status=status or 200,
                                csrf=auth.csrf_for(secret), error=error, name=name,
                                next_path=next_path)
    response.set_cookie(LOGIN_COOKIE, secret, httponly=True, samesite="strict",
                        secure=_secure_cookie(request), path="/login", max_age=3600)
    return response
