"""Delivery: at least once with idempotent effects, retries, Retry-After, 410, crashes, races."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from firstvalue.actions.channels import message_id_for
from firstvalue.actions.dispatch import LEASE_SECONDS, Dispatcher
from firstvalue.actions.outbox import replay
from firstvalue.engine.compiled import compile_playbook
from firstvalue.ingest.service import ingest_messages
from firstvalue.playbook.loader import parse_playbook
from firstvalue.runtime.evaluation import tick
from tests.channel_fakes import HttpReceiver, SmtpServer
from tests.conftest import encode, micros

SECOND = 1_000_000
MINUTE = 60 * SECOND
T0 = micros("2026-03-02T10:00:00Z")  # a Monday, 11:00 in Berlin: inside the send window

PLAYBOOK = """name: delivery
meanings:
  contract_signed: [Deal Closed Won]
  kickoff_completed: [Kickoff Completed]
  kickoff_scheduled: [Kickoff Scheduled]
  login: [Signed In]
  value_delivered: [Value Delivered]
  report_shared: [Report Shared]
milestones:
  - key: first_value
    when: {meaning: value_delivered}
tracks:
  - key: only
    kickoff: false
    targets: {first_value: 5}
rules:
  - key: signed
    on: {anchor: contract_signed}
    actions:
      - {kind: webhook, template: note}
      - {kind: task, to: owner, template: note}
      - {kind: email, to: champion, template: note}
  - key: shared
    on: {meaning: report_shared}
    actions: [{kind: email, to: champion, template: note}]
templates:
  note:
    subject: "Hello {{ account.name }}"
    body: "A note for {{ account.name }}."
"""


@pytest.fixture
def delivery_playbook(tmp_path):
    path = tmp_path / "delivery.yaml"
    path.write_text(PLAYBOOK)
    return compile_playbook(parse_playbook(PLAYBOOK, str(path))), path


@pytest.fixture
def smtp(monkeypatch):
    server = SmtpServer().start()
    monkeypatch.setenv("FIRSTVALUE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("FIRSTVALUE_SMTP_PORT", str(server.port))
    yield server
    server.stop()


@pytest.fixture
def hook(monkeypatch):
    receiver = HttpReceiver().start()
    monkeypatch.setenv("FIRSTVALUE_WEBHOOK_URL", receiver.url)
    monkeypatch.setenv("FIRSTVALUE_WEBHOOK_SECRET", "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    yield receiver
    receiver.stop()


def sign_up(database, playbook, account="acme", at=T0, names=("Deal Closed Won",)):
    champion = f"{account}-u1"
    messages = [
        {"type": "identify", "messageId": f"{account}-i", "userId": champion,
         "timestamp": "2026-03-01T00:00:00Z",
         "traits": {"email": f"{champion}@example.com", "role": "champion"}},
        {"type": "group", "messageId": f"{account}-g", "userId": champion, "groupId": account,
         "timestamp": "2026-03-01T00:00:00Z",
         "traits": {"name": account.title(), "timezone": "Europe/Berlin",
                    "owner": "csm@example.com"}},
    ]
    for index, name in enumerate(names):
        messages.append({"type": "track", "messageId": f"{account}-t{index}", "userId": champion,
                         "event": name, "timestamp": "2026-03-02T09:59:00Z",
                         "context": {"groupId": account}, "properties": {"deal_id": "d1"}})
    ingest_messages(database, [encode(m) for m in messages], at, playbook.anchor_names)
    tick(database, playbook, at)


def rows(database, where="1 = 1"):
    with database.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(
            f"SELECT * FROM actions WHERE {where} ORDER BY id"))]


def test_a_dispatcher_killed_mid_delivery_redelivers_with_the_same_webhook_id(
        sqlite_database, delivery_playbook, hook, smtp, tmp_path):
    playbook, path = delivery_playbook
    sign_up(sqlite_database, playbook)
    hook.hold_first = True

    # Given a dispatcher process that is delivering the webhook when it is killed,
    env = {**os.environ, "FIRSTVALUE_WEBHOOK_URL": hook.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "firstvalue.cli.main", "--db", sqlite_database.url,
         "--playbook", str(path), "dispatch", "--now", "2026-03-02T10:00:00Z"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert hook.arrived.wait(30), process.communicate()
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    hook.pause.set()

    # when a new dispatcher runs after the claim's lease ran out,
    later = T0 + (LEASE_SECONDS + 1) * SECOND
    Dispatcher(sqlite_database, playbook).run_once(later)
    Dispatcher(sqlite_database, playbook).run_once(later + MINUTE)

    # then every action is delivered, the webhook twice under one id, the task once.
    assert [r["status"] for r in rows(sqlite_database)] == ["sent", "sent", "sent"]
    ids = [r.headers["webhook-id"] for r in hook.received]
    assert len(ids) == 2 and ids[0] == ids[1] == "acme/acme-t0/signed/1"
    assert len(rows(sqlite_database, "kind = 'task'")) == 1
    assert len(smtp.messages) == 1


def test_an_email_in_flight_when_the_dispatcher_is_killed_comes_again_with_its_message_id(
        sqlite_database, delivery_playbook, hook, smtp):
    playbook, path = delivery_playbook
    sign_up(sqlite_database, playbook)
    smtp.sink.hold_first = True

    # Given a dispatcher process killed while the SMTP server holds back its answer,
    env = {**os.environ}
    process = subprocess.Popen(
        [sys.executable, "-m", "firstvalue.cli.main", "--db", sqlite_database.url,
         "--playbook", str(path), "dispatch", "--now", "2026-03-02T10:00:00Z"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert smtp.sink.arrived.wait(30), process.communicate()
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)
    smtp.sink.release.set()

    # when a new dispatcher runs after the lease,
    Dispatcher(sqlite_database, playbook).run_once(T0 + (LEASE_SECONDS + 1) * SECOND)

    # then the email comes again, under the Message-ID of the first attempt.
    [email_row] = rows(sqlite_database, "kind = 'email'")
    assert email_row["status"] == "sent"
    ids = [m["Message-ID"] for m in smtp.messages]
    assert ids == [message_id_for(email_row["key"])] * 2


def test_an_email_sent_again_carries_the_same_message_id(sqlite_database, delivery_playbook,
                                                         hook, smtp):
    playbook, _ = delivery_playbook
    sign_up(sqlite_database, playbook)
    Dispatcher(sqlite_database, playbook).run_once(T0)
    email_row = rows(sqlite_database, "kind = 'email'")[0]
    with sqlite_database.engine.begin() as conn:
        conn.execute(sa.text("UPDATE actions SET status = 'failed', next_attempt_at = :t "
                             "WHERE id = :id"), {"t": T0, "id": email_row["id"]})
    Dispatcher(sqlite_database, playbook).run_once(T0 + MINUTE)
    ids = [m["Message-ID"] for m in smtp.messages]
    assert ids == [message_id_for(email_row["key"])] * 2


def test_emails_are_retried_while_the_smtp_server_is_down_and_delivered_once_back(
        database, delivery_playbook, hook, smtp):
    playbook, _ = delivery_playbook
    sign_up(database, playbook, "acme")
    sign_up(database, playbook, "globex")
    smtp.sink.refuse = True
    dispatcher = Dispatcher(database, playbook)
    for minute in range(0, 61):
        dispatcher.run_once(T0 + minute * MINUTE)
    emails = rows(database, "kind = 'email'")
    assert {r["status"] for r in emails} == {"failed"}
    assert all(r["attempts"] >= 5 for r in emails)

    smtp.sink.refuse = False
    for minute in range(61, 200):
        dispatcher.run_once(T0 + minute * MINUTE)
    emails = rows(database, "kind = 'email'")
    assert {r["status"] for r in emails} == {"sent"}
    assert sorted(m["To"] for m in smtp.messages) == ["acme-u1@example.com",
                                                       "globex-u1@example.com"]


def test_a_429_with_retry_after_is_honoured(database, delivery_playbook, hook, smtp):
    playbook, _ = delivery_playbook
    hook.script = [(429, {"Retry-After": "120"})]
    sign_up(database, playbook)
    dispatcher = Dispatcher(database, playbook)
    dispatcher.run_once(T0)
    webhook = rows(database, "kind = 'webhook'")[0]
    assert (webhook["status"], webhook["next_attempt_at"]) == ("failed", T0 + 120 * SECOND)
    dispatcher.run_once(T0 + 119 * SECOND)
    assert len(hook.received) == 1
    dispatcher.run_once(T0 + 120 * SECOND)
    assert len(hook.received) == 2
    assert rows(database, "kind = 'webhook'")[0]["status"] == "sent"


def test_a_410_disables_the_endpoint_and_keeps_its_rows_for_replay(database, delivery_playbook,
                                                                   hook, smtp):
    playbook, _ = delivery_playbook
    hook.script = [(410, {})]
    sign_up(database, playbook, "acme")
    dispatcher = Dispatcher(database, playbook)
    dispatcher.run_once(T0)
    sign_up(database, playbook, "globex", at=T0 + MINUTE)
    dispatcher.run_once(T0 + MINUTE)

    webhooks = rows(database, "kind = 'webhook'")
    assert [r["status"] for r in webhooks] == ["dead", "dead"]
    assert len(hook.received) == 1  # the second never went to the gone endpoint
    assert "disabled" in webhooks[1]["error"]

    with database.engine.begin() as conn:
        assert replay(conn, [], "webhook", T0 + 2 * MINUTE) == 2
    dispatcher.run_once(T0 + 2 * MINUTE)
    assert [r["status"] for r in rows(database, "kind = 'webhook'")] == ["sent", "sent"]
    assert len(hook.received) == 3


def test_a_webhook_is_signed_per_standard_webhooks(database, delivery_playbook, hook, smtp):
    from standardwebhooks import Webhook

    playbook, _ = delivery_playbook
    sign_up(database, playbook)
    Dispatcher(database, playbook).run_once(T0)
    [received] = hook.received
    headers = {name.lower(): value for name, value in received.headers.items()}
    payload = Webhook("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").verify(received.body,
                                                                            headers)
    assert payload["key"] == "acme/acme-t0/signed/1"
    assert payload["body"] == "A note for Acme."
    with pytest.raises(Exception, match="[Ss]ignature"):
        Webhook("whsec_" + "A" * 32).verify(received.body, headers)


def test_two_workers_evaluating_at_once_fire_a_once_per_run_rule_once(database,
                                                                       delivery_playbook):
    playbook, _ = delivery_playbook
    sign_up(database, playbook)
    barrier = threading.Barrier(2)
    errors = []

    def worker(index: int) -> None:
        try:
            message = {"type": "track", "messageId": f"share-{index}", "userId": "acme-u1",
                       "event": "Report Shared", "timestamp": f"2026-03-02T10:00:0{index}Z",
                       "context": {"groupId": "acme"}}
            ingest_messages(database, [encode(message)], T0 + index * 1000,
                            playbook.anchor_names)
            barrier.wait(10)
            tick(database, playbook, T0 + 10 * SECOND)
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert [r["key"] for r in rows(database, "rule = 'shared'")] == ["acme/acme-t0/shared/1"]


def test_a_template_that_misbehaves_fails_its_action_and_nothing_else(database, tmp_path, hook,
                                                                      smtp):
    text = PLAYBOOK.replace('body: "A note for {{ account.name }}."',
                            'body: "A note for {{ account.name }}."\n'
                            '  evil:\n'
                            '    subject: "x"\n'
                            '    body: "{{ account.__class__.__mro__ }}"\n'
                            '  endless:\n'
                            '    subject: "x"\n'
                            '    body: "{% for a in range(99999) %}{% for b in range(99999) %}'
                            '{% endfor %}{% endfor %}"\n'
                            '  huge:\n'
                            '    subject: "x"\n'
                            '    body: "{% for a in range(5000) %}{{ \'x\' * 99999 }}'
                            '{% endfor %}"')
    text = text.replace("      - {kind: email, to: champion, template: note}\n  - key: shared",
                        "      - {kind: email, to: champion, template: note}\n"
                        "      - {kind: email, to: champion, template: evil}\n"
                        "      - {kind: email, to: champion, template: endless}\n"
                        "      - {kind: email, to: champion, template: huge}\n"
                        "  - key: shared")
    playbook = compile_playbook(parse_playbook(text, "evil.yaml"))
    sign_up(database, playbook)
    started = time.monotonic()
    Dispatcher(database, playbook).run_once(T0)
    assert time.monotonic() - started < 20
    by_template = {r["template"]: r for r in rows(database)}
    assert by_template["note"]["status"] == "sent"
    for name, why in (("evil", "unsafe"), ("endless", "loops over more than"),
                      ("huge", "renders more than")):
        assert by_template[name]["status"] == "dead"
        assert why in by_template[name]["error"], by_template[name]["error"]
    assert len(smtp.messages) == 1



def test_templates_that_allocate_in_c_are_stopped_before_they_do():
    from firstvalue.actions.templates import TemplateRenderError, render

    for source in ('{{ "x"|center(300000000) }}', "{{ (((9**64)**64)**64) }}",
                   '{{ "%300000000s"|format(1) }}', '{{ "a"|indent(99999999) }}'):
        with pytest.raises(TemplateRenderError):
            render(source, {})
    assert render('{{ "%s-%s"|format(1, 2) }}', {}) == "1-2"


def test_playbook_check_reports_a_template_that_does_not_parse():
    from firstvalue.errors import PlaybookError

    broken = PLAYBOOK.replace('body: "A note for {{ account.name }}."',
                              'body: "A note for {{ account.name "')
    with pytest.raises(PlaybookError, match=r"templates\.note\.body"):
        parse_playbook(broken, "broken.yaml")
