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

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

KEY_PATTERN = r"^[a-z][a-z0-9_]*$"
Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=64)]
Scalar = str | int | float | bool | None


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
    exists: bool | None = None

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
    kickoff: bool = True
    targets: dict[str, int] = Field(default_factory=dict)
    ttv_target: int | None = Field(default=None, ge=0)
    end_day: int = Field(default=90, ge=1, le=3650)
    milestones: list[Milestone] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _targets_are_days(cls, targets: dict[str, int]) -> dict[str, int]:
        for key, days in targets.items():
            if days < 0:
                raise ValueError(f"target for {key!r} is {days}; a target day is 0 or more")
        return targets


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

    @field_validator("meanings", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: [names] if isinstance(names, str) else names
                    for key, names in value.items()}
        return value


PHASE_ANCHORS = ("contract_signed", "kickoff")
