"""Settings as data: one list feeds the CLI, the docs and a test that checks both."""

from __future__ import annotations

import os
from dataclasses import dataclass

from firstvalue.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("db", "FIRSTVALUE_DB", "sqlite:///firstvalue.db",
            "Database URL: sqlite:///FILE or postgresql://USER@HOST:PORT/DB."),
    Setting("playbook", "FIRSTVALUE_PLAYBOOK", None,
            "Playbook YAML file; the built-in default playbook when unset."),
    Setting("write_keys", "FIRSTVALUE_WRITE_KEYS", None,
            "Comma-separated ingest write keys accepted besides those created with the CLI."),
    Setting("host", "FIRSTVALUE_HOST", "127.0.0.1", "Address `serve` binds to."),
    Setting("port", "FIRSTVALUE_PORT", "8000", "Port `serve` listens on."),
    Setting("tick_seconds", "FIRSTVALUE_TICK_SECONDS", "60",
            "Seconds between two ticks of the scheduler in `serve`."),
    Setting("hold_days", "FIRSTVALUE_HOLD_DAYS", "7",
            "Days after which held events still without an account are reported."),
    Setting("smtp_host", "FIRSTVALUE_SMTP_HOST", None,
            "SMTP server for emails; without it emails wait, undelivered, until one is set."),
    Setting("smtp_port", "FIRSTVALUE_SMTP_PORT", "25", "SMTP server port."),
    Setting("smtp_from", "FIRSTVALUE_SMTP_FROM", "onboarding@firstvalue.invalid",
            "The From address of emails."),
    Setting("smtp_user", "FIRSTVALUE_SMTP_USER", None, "SMTP user name, when it needs one."),
    Setting("smtp_password", "FIRSTVALUE_SMTP_PASSWORD", None, "SMTP password (a secret)."),
    Setting("slack_webhook_url", "FIRSTVALUE_SLACK_WEBHOOK_URL", None,
            "Slack incoming webhook for alerts to owners; without it they go by email."),
    Setting("webhook_url", "FIRSTVALUE_WEBHOOK_URL", None,
            "Receiver of `webhook` actions, signed per Standard Webhooks."),
    Setting("webhook_secret", "FIRSTVALUE_WEBHOOK_SECRET", None,
            "Signing secret of outbound webhooks (whsec_...; a secret)."),
    Setting("team_lead", "FIRSTVALUE_TEAM_LEAD", None,
            "Who gets tasks addressed to the manager when an account names none."),
    Setting("team_queue", "FIRSTVALUE_TEAM_QUEUE", None,
            "The shared inbox for self-serve accounts' escalations and for an away owner's "
            "tasks and alerts when no cover is in."),
    Setting("max_attempts", "FIRSTVALUE_MAX_ATTEMPTS", "10",
            "Delivery attempts before an action is parked as dead."),
)

_BY_NAME = {setting.name: setting for setting in SETTINGS}


def get_setting(name: str) -> str | None:
    """The value of a setting: its environment variable, else its default."""
    setting = _BY_NAME[name]
    return os.environ.get(setting.env) or setting.default


def get_int_setting(name: str) -> int:
    raw = get_setting(name)
    try:
        return int(raw or "")
    except ValueError:
        setting = _BY_NAME[name]
        raise ConfigError(f"{setting.env}={raw!r} is not a whole number; set it to e.g. "
                          f"{setting.default}") from None
