"""The playbook file's shape, validated with pydantic and exported as JSON Schema.

A condition (`when`) is one of four forms:

- `{event: NAME}` or `{meaning: KEY}`, optionally with `where` (property filters), `contact`
  (filters on the acting contact's traits) and `count` (at least N matching events);
- `{all_of: [CONDITION, ...]}`: done when every part is done, at the latest part's time;
- `{any_of: [CONDITION, ...]}`: done when one part is done, at the earliest part's time;
- `{users: N, of: NAME-or-MEANING list, ...}`: done when N distinct users did one of the events,
  optionally counting only users with distinct values of a contact trait (`distinct_by`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)
from pydantic import Strict as PydanticStrict

KEY_PATTERN = r"^[a-z][a-z0-9_]*$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=64)]
Scalar = str | int | float | bool | None
# Only YAML's true and false: no "yes", "off" or 0 standing in for a flag.
Flag = Annotated[bool, PydanticStrict()]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Comparison(Strict):
    """An operator filter on one value: `{gte: 5}`, `{in: [a, b]}`, `{exists: true}`."""

    eq: Scalar = None
    ne: Scalar = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    exists: Flag | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_operator_at_least(self) -> Comparison:
        if not self.model_fields_set:
            raise ValueError("an empty operator filter matches nothing; give eq, ne, gt, gte, "
                             "lt, lte, in or exists")
        return self


Filter = dict[str, Scalar | list[Scalar] | Comparison]


class EventCondition(Strict):
    event: str | list[str] | None = None
    meaning: Key | list[Key] | None = None
    where: Filter = Field(default_factory=dict)
    contact: Filter = Field(default_factory=dict)
    count: int = Field(default=1, ge=1, le=100_000)

    @model_validator(mode="after")
    def _names_exactly_one_source(self) -> EventCondition:
        if (self.event is None) == (self.meaning is None):
            raise ValueError("give exactly one of `event` (event names) or `meaning` (a key of "
                             "`meanings`)")
        return self


class UsersCondition(Strict):
    users: int = Field(ge=1, le=10_000)
    of: list[str] = Field(min_length=1)
    where: Filter = Field(default_factory=dict)
    contact: Filter = Field(default_factory=dict)
    distinct_by: str | None = None

    @field_validator("of", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class AllOf(Strict):
    all_of: list[Condition] = Field(min_length=1)


class AnyOf(Strict):
    any_of: list[Condition] = Field(min_length=1)


def _condition_shape(value: Any) -> str:
    """Which of the four shapes a condition is meant to be, from the key it starts with."""
    keys = value if isinstance(value, dict) else getattr(value, "model_fields_set", ())
    for key in ("all_of", "any_of", "users"):
        if key in keys:
            return key
    return "event"


Condition = Annotated[
    Annotated[EventCondition, Tag("event")]
    | Annotated[UsersCondition, Tag("users")]
    | Annotated[AllOf, Tag("all_of")]
    | Annotated[AnyOf, Tag("any_of")],
    Discriminator(_condition_shape),
]


class Milestone(Strict):
    key: Key
    name: str | None = None
    description: str | None = None
    when: Condition


class Track(Strict):
    key: Key
    name: str | None = None
    match: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    kickoff: Flag = True
    targets: dict[str, int] = Field(default_factory=dict)
    ttv_target: int | None = Field(default=None, ge=0)
    product_type: Literal["self_serve", "mid_market", "enterprise", "data_analytics"] | None = None
    end_day: int = Field(default=90, ge=1, le=3650)
    milestones: list[Milestone] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    templates: dict[Key, Template] = Field(default_factory=dict)

    @field_validator("targets")
    @classmethod
    def _targets_are_days(cls, targets: dict[str, int]) -> dict[str, int]:
        for key, days in targets.items():
            if days < 0:
                raise ValueError(f"target for {key!r} is {days}; a target day is 0 or more")
        return targets


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ANCHOR_NAMES = ("contract_signed", "kickoff")
Anchor = Literal["contract_signed", "kickoff"]
ActionKind = Literal["email", "in_app", "task", "slack", "webhook", "flag"]
Recipient = Literal["champion", "owner", "actor", "manager", "queue", "account", "ae"]
StallKind = Literal["inactivity", "overdue", "missed_calls", "champion_silent", "custom"]
Diagnosis = Literal["integration_blocker", "champion_quiet", "scope_creep", "unknown"]
CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class SendWindow(Strict):
    """When messages may go out, in the account's own timezone."""

    start: str = Field(default="09:00", pattern=CLOCK_PATTERN)
    end: str = Field(default="17:00", pattern=CLOCK_PATTERN)
    weekdays: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)

    @model_validator(mode="after")
    def _start_before_end(self) -> SendWindow:
        if self.start >= self.end:
            raise ValueError(f"the window opens at {self.start} and closes at {self.end}; "
                             "the opening must come first")
        return self


class Happening(Strict):
    """Something that happened: an event (by meaning or name), a milestone or an anchor."""

    meaning: Key | None = None
    event: str | None = None
    milestone: Key | None = None
    anchor: Anchor | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Happening:
        given = [name for name in ("meaning", "event", "milestone", "anchor")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of meaning, event, milestone or anchor")
        return self


class DayTrigger(Strict):
    """A moment counted from an anchor: local day N (at the send window's opening), or hours."""

    day: int | None = Field(default=None, ge=0, le=3650)
    hours: int | None = Field(default=None, ge=0, le=87_600)
    since: Anchor = "kickoff"
    business_days: Flag = False

    @model_validator(mode="after")
    def _day_or_hours(self) -> DayTrigger:
        if (self.day is None) == (self.hours is None):
            raise ValueError("give exactly one of `day` (local days, at the send window's "
                             "opening) or `hours` (elapsed time)")
        if self.business_days and self.day is None:
            raise ValueError("business_days counts days; give `day`, not `hours`")
        return self


class Delay(Strict):
    """How long after its rule's trigger an escalation comes due."""

    days: int | None = Field(default=None, ge=0, le=3650)
    hours: int | None = Field(default=None, ge=0, le=87_600)

    @model_validator(mode="after")
    def _days_or_hours(self) -> Delay:
        if (self.days is None) == (self.hours is None):
            raise ValueError("give exactly one of `days` or `hours`")
        return self


class ActionSpec(Strict):
    kind: ActionKind
    to: Recipient | None = None
    template: Key | None = None


class Escalation(Strict):
    key: Key
    at: DayTrigger | None = None
    after: Delay | None = None
    unless: Happening | None = None
    where: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    actions: list[ActionSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_timing(self) -> Escalation:
        if self.at is not None and self.after is not None:
            raise ValueError("give `at` or `after`, not both (neither: due with the rule)")
        return self


class Rule(Strict):
    key: Key
    description: str | None = None
    on: Happening | None = None
    at: DayTrigger | None = None
    unless: Happening | None = None
    where: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    once: Literal["run", "occurrence"] = "run"
    actions: list[ActionSpec] = Field(default_factory=list)
    escalations: list[Escalation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_trigger(self) -> Rule:
        if (self.on is None) == (self.at is None):
            raise ValueError("give exactly one trigger: `on` (something happened) or `at` (a "
                             "day or hours since an anchor)")
        if self.once == "occurrence" and (self.on is None or self.on.anchor is not None):
            raise ValueError("once: occurrence is for rules `on` an event or meaning")
        if not self.actions and not self.escalations:
            raise ValueError("a rule needs actions or escalations")
        return self


class StallRule(Strict):
    """A pattern of an account that stopped progressing. Its parameters by kind:

    - inactivity: no login for `days` consecutive local days, raised only within the first
      `within_days` days (business days with `business_days`);
    - overdue: a milestone more than `percent` % past its target day;
    - missed_calls: `count` or more missed or rescheduled calls, a cancellation followed within
      `rebook_hours` by a new booking counting as one reschedule;
    - champion_silent: no activity of the champion's own (`activity` meanings) for more than
      `days` days;
    - custom: holds from when `when` is first true until `until` happens.
    """

    key: Key
    kind: StallKind
    days: int | None = Field(default=None, ge=1, le=3650)
    within_days: int | None = Field(default=None, ge=1, le=3650)
    business_days: Flag = False
    percent: int = Field(default=50, ge=0, le=10_000)
    count: int = Field(default=2, ge=1, le=1000)
    rebook_hours: int = Field(default=24, ge=0, le=8760)
    activity: list[Key] = Field(default_factory=lambda: ["login", "email_replied",
                                                         "call_completed"])
    when: Condition | None = None
    until: Happening | None = None

    @model_validator(mode="after")
    def _parameters_fit_the_kind(self) -> StallRule:
        if self.kind in ("inactivity", "champion_silent") and self.days is None:
            raise ValueError(f"a {self.kind} stall needs `days`")
        if self.kind == "custom" and self.when is None:
            raise ValueError("a custom stall needs `when` (a condition like a milestone's)")
        return self


class Intervention(Strict):
    """What to do when a stall opens, by its kind and diagnosis."""

    key: Key
    kinds: list[StallKind] | None = None
    diagnosis: list[Diagnosis] | None = None
    where: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    actions: list[ActionSpec] = Field(min_length=1)


class DiagnosisSettings(Strict):
    """The signals the diagnosis reads."""

    blocker_meanings: list[Key] = Field(default_factory=lambda: ["data_connection_failed"])
    blocker_topics: list[str] = Field(default_factory=lambda: ["sso", "security_review"])
    ticket_meaning: Key = "ticket_opened"
    before_milestone: Key = "data_connected"
    feature_meaning: Key = "feature_started"
    scope_creep_features: int = Field(default=3, ge=1)


class Template(Strict):
    subject: str | None = None
    body: str


class ContractAnchor(Strict):
    meaning: Key = "contract_signed"
    trait: str = "contract_signed_at"
    deal_property: str = "deal_id"
    restart_meaning: Key = "onboarding_restarted"


class KickoffAnchor(Strict):
    completed: Key = "kickoff_completed"
    scheduled: Key = "kickoff_scheduled"
    start_property: str = "start_time"
    trait: str = "kickoff_at"


class Anchors(Strict):
    contract_signed: ContractAnchor = Field(default_factory=ContractAnchor)
    kickoff: KickoffAnchor = Field(default_factory=KickoffAnchor)


class TierRule(Strict):
    """One tier rule: the first whose `where` fits the account's traits gives its tier.

    `where` maps a trait to a value, a list of values, or an operator filter such as
    `{gte: 100000}` (numbers compare only with numbers)."""

    tier: int = Field(ge=1, le=3)
    where: dict[str, Scalar | list[Scalar] | Comparison] = Field(default_factory=dict)


class Ownership(Strict):
    """Who owns an account of one tier.

    `dedicated`: a member of `role` (an implementation manager) of its own; `pooled`: the
    member of `role` with the lowest load relative to capacity; `none`: self-serve, no owner,
    and the human escalations go to the team queue."""

    model: Literal["dedicated", "pooled", "none"]
    role: Literal["csm", "implementation_manager"] | None = None

    @model_validator(mode="after")
    def _role_for_an_owner(self) -> Ownership:
        if self.model != "none" and self.role is None:
            raise ValueError(f"a {self.model} ownership model needs `role` (csm or "
                             "implementation_manager)")
        if self.model == "none" and self.role is not None:
            raise ValueError("ownership model none has no owner, so no `role`; remove it")
        return self


class Variant(Strict):
    """One arm of an experiment: rules that replace the playbook's (or a track's) rules of the
    same key, or come on top, and templates that replace those of the same key."""

    key: Key
    name: str | None = None
    rules: list[Rule] = Field(default_factory=list)
    templates: dict[Key, Template] = Field(default_factory=dict)


class Experiment(Strict):
    """An onboarding experiment: each run that fits `where` is assigned one variant, once,
    balanced within each tier by permuted blocks drawn from `seed`."""

    key: Key
    description: str | None = None
    seed: int
    where: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    variants: list[Variant] = Field(min_length=2, max_length=10)
    block_size: int | None = Field(default=None, ge=2, le=1000)
    milestone: Key | None = None
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1)


class OnboardingPath(Strict):
    """An onboarding path chosen by the handoff's use case (else the `use_case` trait): its
    own milestone definitions (by key, replacing the track's) and templates (by key)."""

    key: Key
    use_case: list[str] = Field(min_length=1)
    milestones: list[Milestone] = Field(default_factory=list)
    templates: dict[Key, Template] = Field(default_factory=dict)


class HandoffField(Strict):
    """One field of the sales-to-CS handoff record.

    `kind`: `text` (a string), `list` (a list of strings), `people` (a list of
    `{name, role, email}` objects, name and role required) or `object` (a JSON object, such as
    the technical requirements `{crm: salesforce, sso: okta}`)."""

    key: Key
    kind: Literal["text", "list", "people", "object"] = "text"
    required: Flag = True
    description: str | None = None


def _standard_handoff_fields() -> list[HandoffField]:
    return [HandoffField(key="use_case", description="The primary use case sold."),
            HandoffField(key="stakeholders", kind="people",
                         description="Key stakeholders and their roles."),
            HandoffField(key="success_criteria", kind="list",
                         description="How the customer will judge success."),
            HandoffField(key="technical_requirements", kind="object",
                         description="What the evaluation surfaced: CRM, SSO, data sources."),
            HandoffField(key="commitments", kind="list",
                         description="Promises made during the sale.")]


class HandoffSettings(Strict):
    """The handoff record's fields, which are required for it to be complete, and the gate.

    On the tracks named in `gate`, customer-facing actions (emails and in-app messages to the
    customer) wait until the handoff is complete, then become due; the AE is reminded
    `remind_ae_after_hours` after the contract, and their manager told
    `escalate_after_hours` after it, while it is not."""

    fields: list[HandoffField] = Field(default_factory=_standard_handoff_fields, min_length=1)
    gate: list[Key] = Field(default_factory=list)
    remind_ae_after_hours: int = Field(default=24, ge=0, le=8760)
    escalate_after_hours: int = Field(default=72, ge=0, le=8760)


class Playbook(Strict):
    """A whole playbook file."""

    version: str = "1"
    name: str = "playbook"
    timezone: str | None = None
    meanings: dict[Key, list[str]] = Field(default_factory=dict)
    anchors: Anchors = Field(default_factory=Anchors)
    milestones: list[Milestone] = Field(min_length=1)
    first_value: Key = "first_value"
    phases: list[Key] = Field(default_factory=list)
    tracks: list[Track] = Field(min_length=1)
    default_track: Key | None = None
    login: Key = "login"
    rules: list[Rule] = Field(default_factory=list)
    templates: dict[Key, Template] = Field(default_factory=dict)
    stalls: list[StallRule] = Field(default_factory=list)
    interventions: list[Intervention] = Field(default_factory=list)
    diagnosis: DiagnosisSettings = Field(default_factory=DiagnosisSettings)
    send_window: SendWindow = Field(default_factory=SendWindow)
    daily_cap: int = Field(default=3, ge=1, le=100)
    late_limit_hours: int = Field(default=24, ge=0, le=87_600)
    tiers: list[TierRule] = Field(default_factory=list)
    ownership: dict[int, Ownership] = Field(default_factory=dict)
    handoff: HandoffSettings = Field(default_factory=HandoffSettings)
    paths: list[OnboardingPath] = Field(default_factory=list)

    @field_validator("ownership")
    @classmethod
    def _tiers_one_to_three(cls, ownership: dict[int, Ownership]) -> dict[int, Ownership]:
        for tier in ownership:
            if tier not in (1, 2, 3):
                raise ValueError(f"ownership is given for tier {tier}; tiers are 1, 2 and 3")
        return ownership


    experiments: list[Experiment] = Field(default_factory=list)

    @field_validator("meanings", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: [names] if isinstance(names, str) else names
                    for key, names in value.items()}
        return value


PHASE_ANCHORS = ANCHOR_NAMES
