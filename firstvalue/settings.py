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


# The settings of the CRM, calendar and email integrations (docs/integrations.md).
CRM_SETTINGS: tuple[Setting, ...] = (
    Setting("hubspot_token", "FIRSTVALUE_HUBSPOT_TOKEN", None,
            "HubSpot private app token (a secret); setting it turns the HubSpot sync on."),
    Setting("hubspot_url", "FIRSTVALUE_HUBSPOT_URL", "https://api.hubapi.com",
            "Base URL of HubSpot's API."),
    Setting("hubspot_milestone_object", "FIRSTVALUE_HUBSPOT_MILESTONE_OBJECT", None,
            "The HubSpot custom object milestone records are written to (its objectTypeId, "
            "e.g. 2-1234567, or its fully qualified name)."),
    Setting("hubspot_id_property", "FIRSTVALUE_HUBSPOT_ID_PROPERTY", "firstvalue_account_id",
            "The unique company property holding the firstvalue account id."),
    Setting("salesforce_url", "FIRSTVALUE_SALESFORCE_URL", None,
            "Salesforce instance URL (https://MyDomain.my.salesforce.com); with the token, "
            "turns the Salesforce sync on."),
    Setting("salesforce_token", "FIRSTVALUE_SALESFORCE_TOKEN", None,
            "Salesforce OAuth access token (a secret)."),
    Setting("salesforce_api_version", "FIRSTVALUE_SALESFORCE_API_VERSION", "v60.0",
            "Salesforce REST API version."),
    Setting("salesforce_id_field", "FIRSTVALUE_SALESFORCE_ID_FIELD", "Firstvalue_Account_Id__c",
            "The external id field of Account holding the firstvalue account id."),
    Setting("salesforce_milestone_object", "FIRSTVALUE_SALESFORCE_MILESTONE_OBJECT",
            "Onboarding_Milestone__c", "The Salesforce custom object of milestone records."),
    Setting("crm_webhook_url", "FIRSTVALUE_CRM_WEBHOOK_URL", None,
            "Receiver of CRM sync records as signed webhooks (Standard Webhooks)."),
    Setting("crm_webhook_secret", "FIRSTVALUE_CRM_WEBHOOK_SECRET", None,
            "Signing secret of the CRM sync webhooks (whsec_...; a secret)."),
    Setting("sync_max_attempts", "FIRSTVALUE_SYNC_MAX_ATTEMPTS", "8",
            "Attempts before a CRM sync row is dead-lettered."),
    Setting("crm_inbound_secret", "FIRSTVALUE_CRM_INBOUND_SECRET", None,
            "Secret (whsec_...) that signs deal webhooks to /webhooks/crm (Standard Webhooks)."),
    Setting("email_inbound_secret", "FIRSTVALUE_EMAIL_INBOUND_SECRET", None,
            "Secret (whsec_...) that signs email engagement webhooks to /webhooks/email."),
    Setting("calendly_signing_key", "FIRSTVALUE_CALENDLY_SIGNING_KEY", None,
            "The signing key of the Calendly webhook subscription (a secret)."),
    Setting("calcom_secret", "FIRSTVALUE_CALCOM_SECRET", None,
            "The secret of the Cal.com webhook (a secret)."),
    Setting("kickoff_match", "FIRSTVALUE_KICKOFF_MATCH", "kickoff",
            "A booked meeting whose event type name contains this word is a kickoff."),
)

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
    Setting("evaluation_workers", "FIRSTVALUE_EVALUATION_WORKERS", None,
            "Worker processes that large ticks and reads evaluate accounts in, beside the "
            "calling process; one fewer than the CPUs when unset, 0 to evaluate in the "
            "calling process only."),
    Setting("parallel_accounts", "FIRSTVALUE_PARALLEL_ACCOUNTS", "1000",
            "Ticks and reads of at least this many accounts use the worker processes; "
            "smaller ones evaluate in the calling process."),
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
    Setting("session_hours", "FIRSTVALUE_SESSION_HOURS", "12",
            "Hours a dashboard login lasts before its user logs in again."),
    Setting("secure_cookies", "FIRSTVALUE_SECURE_COOKIES", "auto",
            "Mark the dashboard's cookies Secure: `auto` (when the request came over HTTPS), "
            "`true` (behind a TLS proxy) or `false`."),
    Setting("refresh_seconds", "FIRSTVALUE_REFRESH_SECONDS", "15",
            "Seconds between two checks of a dashboard page for new data; 0 turns it off."),
    *CRM_SETTINGS,
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
