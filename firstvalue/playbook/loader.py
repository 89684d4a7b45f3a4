"""Reading a playbook file: YAML, then pydantic, then the checks that span the whole file."""

from __future__ import annotations

import hashlib
import json
import re
import zoneinfo
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from firstvalue.errors import PlaybookError, PlaybookProblem
from firstvalue.playbook.model import (
    CLOCK_PATTERN,
    PHASE_ANCHORS,
    AllOf,
    AnyOf,
    Condition,
    EventCondition,
    Happening,
    Playbook,
    Rule,
    UsersCondition,
)

DEFAULT_PLAYBOOK_NAME = "default.yaml"


@dataclass(frozen=True, eq=False)
class LoadedPlaybook:
    """A validated playbook with the version every evaluation records."""

    model: Playbook
    version: str
    source: str
    text: str


def read_default_text() -> str:
    return resources.files("firstvalue.playbook").joinpath(DEFAULT_PLAYBOOK_NAME).read_text()


def load_playbook(path: str | Path | None = None) -> LoadedPlaybook:
    """Load and validate a playbook; the built-in default when `path` is None."""
    if path is None:
        return parse_playbook(read_default_text(), source="(built-in default)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        problem = PlaybookProblem("", "the file is not UTF-8 text", "save it as UTF-8")
        raise PlaybookError(str(path), [problem]) from None
    except OSError as exc:
        problem = PlaybookProblem("", f"cannot read the file: {exc.strerror}",
                                  "give the path of an existing playbook YAML file")
        raise PlaybookError(str(path), [problem]) from None
    return parse_playbook(text, source=str(path))


def parse_playbook(text: str, source: str) -> LoadedPlaybook:
    data, lines = _read_yaml(text, source)
    try:
        model = Playbook.model_validate(data)
    except ValidationError as exc:
        raise PlaybookError(source, _problems_from_pydantic(exc, lines)) from None

    problems = check_playbook(model)
    for problem in problems:
        problem.line = _line_of(problem.location, lines)
    if problems:
        raise PlaybookError(source, problems)
    from firstvalue.playbook.experiments import with_variant_templates

    model = with_variant_templates(model)
    return LoadedPlaybook(model=model, version=_version_of(model, text), source=source, text=text)


def playbook_json_schema() -> dict[str, Any]:
    schema = Playbook.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "firstvalue playbook"
    return schema


def _version_of(model: Playbook, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return f"{model.name}@{model.version}+{digest}"


class _PlaybookLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true and false. YAML 1.1 also reads `on`, `off`, `yes` and `no`
    as booleans, which would turn a rule's `on:` key into `true:`."""


_PlaybookLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlaybookLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _read_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    try:
        data = yaml.load(text, Loader=_PlaybookLoader)  # noqa: S506 (a SafeLoader subclass)
        node = yaml.compose(text, Loader=_PlaybookLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = PlaybookProblem("", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                  "fix the YAML syntax at that line", line)
        raise PlaybookError(source, [problem]) from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a {type(data).__name__}"
        problem = PlaybookProblem("", f"the file holds {held}, not a mapping",
                                  "start the file with keys such as `milestones:` and `tracks:`")
        raise PlaybookError(source, [problem])
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return data, lines


def _collect_lines(node: yaml.Node | None, path: str, lines: dict[str, int]) -> None:
    """Map every place in the file (`milestones[2].when`) to its line number."""
    if node is None:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            _collect_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, f"{path}[{index}]", lines)


def _line_of(location: str, lines: dict[str, int]) -> int | None:
    while location:
        if location in lines:
            return lines[location]
        location = location.rsplit(".", 1)[0] if "." in location else ""
    return None


def _problems_from_pydantic(exc: ValidationError, lines: dict[str, int]) -> list[PlaybookProblem]:
    errors = [(_format_location(error["loc"]), error) for error in exc.errors()]
    places = {location for location, _ in errors}
    problems: dict[str, PlaybookProblem] = {}
    for location, error in errors:
        # A value that may take several types gets one complaint per type; the one that went
        # deepest into the value says what is really wrong, so keep only that one.
        deeper = any(p.startswith(location + ".") or p.startswith(location + "[")
                     for p in places)
        if location in problems or (deeper and error["type"] != "extra_forbidden"):
            continue
        message, fix = _explain(error)
        problems[location] = PlaybookProblem(location, message, fix, _line_of(location, lines))
    return list(problems.values())


# Names pydantic puts in a location for the member of a union it tried; not keys of the file.
_UNION_TAGS = {"event", "users", "all_of", "any_of"}
_TYPE_NAMES = {"Comparison", "str", "int", "float", "bool", "none", "list[str]"}


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif _is_type_name(part) or _is_union_tag(loc, index):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text


def _is_union_tag(loc: tuple[Any, ...], index: int) -> bool:
    """Pydantic names the shape of a condition it tried right after the condition's place."""
    if loc[index] not in _UNION_TAGS or index == 0:
        return False
    before = loc[index - 1]
    if before == "when":
        return True
    return isinstance(before, int) and index >= 2 and loc[index - 2] in ("all_of", "any_of")


def _is_type_name(part: Any) -> bool:
    return isinstance(part, str) and (
        part in _TYPE_NAMES or part.startswith(("function-", "list[", "union[", "dict[")))


def _explain(error: dict[str, Any]) -> tuple[str, str]:
    kind = error["type"]
    value = error.get("input")
    if kind == "missing":
        return "required key is missing", "add it"
    if kind == "extra_forbidden":
        key = error["loc"][-1]
        return (f"unknown key {key!r}",
                "remove it or correct its spelling; `firstvalue playbook schema` lists the keys")
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == CLOCK_PATTERN:
        return (f"{_short(value)} is not a time of day",
                'write it as HH:MM on the 24-hour clock, in quotes, e.g. "09:00" or "17:30"')
    if kind == "string_pattern_mismatch":
        return (f"{_short(value)} is not a valid key",
                "use lower-case letters, digits and underscores, starting with a letter")
    if kind == "string_type" and isinstance(value, int) and not isinstance(value, bool):
        hint = ('; YAML reads an unquoted time such as 9:00 as the number 540, so write "09:00"'
                if isinstance(value, int) and value >= 60 else "")
        return (f"{value} is a number here, not text", f"put the value in quotes{hint}")
    if kind == "string_type" and isinstance(value, float):
        return (f"{value} is a number here, not text",
                "put the value in quotes as you mean it: unquoted, YAML reads a version such "
                'as 2026.10 as the number 2026.1; write "2026.10"')
    if kind == "bool_type":
        return (f"{_short(value)} is not true or false", "write true or false")
    if kind in ("union_tag_invalid", "model_type", "union_tag_not_found") or "union" in kind:
        return (f"{_short(value)} is not a condition",
                "write one of {event: NAME}, {meaning: KEY}, {users: N, of: [...]}, "
                "{all_of: [...]} or {any_of: [...]}")
    if kind == "value_error":
        # A check of the playbook's own, whose message says what is wrong and how.
        return error["msg"].removeprefix("Value error, ").rstrip("."), "correct the values"
    return f"{error['msg'].rstrip('.')} (value {_short(value)})", "correct the value"


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


RESERVED_RULE_KEYS = frozenset({"routing", "stall", "handoff"})


def check_playbook(model: Playbook) -> list[PlaybookProblem]:
    """The checks that need the whole file: references between keys, and the timezone."""
    problems: list[PlaybookProblem] = []
    milestone_keys = [milestone.key for milestone in model.milestones]
    meanings = set(model.meanings)

    problems += _duplicates("milestones", milestone_keys)
    problems += _duplicates("tracks", [track.key for track in model.tracks])
    track_keys = [track.key for track in model.tracks]
    problems += _duplicates("paths", [path.key for path in model.paths])
    problems += _duplicates("handoff.fields", [field.key for field in model.handoff.fields])
    for index, path in enumerate(model.paths):
        problems += _template_problems(path.templates, f"paths[{index}].templates")
        for inner, milestone in enumerate(path.milestones):
            if milestone.key not in milestone_keys:
                problems.append(PlaybookProblem(
                    f"paths[{index}].milestones[{inner}].key",
                    f"unknown milestone {milestone.key!r}",
                    f"a path redefines milestones of the playbook: {', '.join(milestone_keys)}"))
    for index, key in enumerate(model.handoff.gate):
        if key not in track_keys:
            problems.append(PlaybookProblem(
                f"handoff.gate[{index}]", f"unknown track {key!r}",
                f"name one of the tracks: {', '.join(track_keys)}"))
    for index, rule in enumerate(model.rules):
        if rule.key in RESERVED_RULE_KEYS:
            problems.append(PlaybookProblem(
                f"rules[{index}].key", f"the rule key {rule.key!r} is reserved: firstvalue's "
                "own actions (routing alerts) carry it", "give the rule another key"))
    if model.timezone is not None:
        problems += _timezone_problems("timezone", model.timezone)
    if model.first_value not in milestone_keys:
        problems.append(PlaybookProblem(
            "first_value", f"unknown milestone {model.first_value!r}",
            f"name one of the milestones: {', '.join(milestone_keys)}"))
    anchors = model.anchors
    needed = [model.login, anchors.contract_signed.meaning, anchors.kickoff.completed,
              anchors.kickoff.scheduled]
    # Restarts are optional; but a restart meaning named in the file must exist.
    if "restart_meaning" in anchors.contract_signed.model_fields_set:
        needed.append(anchors.contract_signed.restart_meaning)
    for meaning in needed:
        if meaning not in meanings:
            problems.append(PlaybookProblem(
                "meanings", f"the meaning {meaning!r} is used by the anchors but not defined",
                f"add `{meaning}: [Event Name]` under `meanings`"))
    for index, phase in enumerate(model.phases):
        if phase not in milestone_keys and phase not in PHASE_ANCHORS:
            problems.append(PlaybookProblem(
                f"phases[{index}]", f"unknown checkpoint {phase!r}",
                f"use contract_signed, kickoff or a milestone key: {', '.join(milestone_keys)}"))
    for index, milestone in enumerate(model.milestones):
        problems += _condition_problems(milestone.when, f"milestones[{index}].when", meanings)
    for index, track in enumerate(model.tracks):
        problems += _track_problems(track, f"tracks[{index}]", milestone_keys, meanings)
    problems += _rules_problems(model.rules, "rules", model, model.templates)
    problems += _stall_problems(model)
    problems += _template_problems(model.templates, "templates")
    for index, track in enumerate(model.tracks):
        problems += _template_problems(track.templates, f"tracks[{index}].templates")
    for index, track in enumerate(model.tracks):
        templates = {**model.templates, **track.templates}
        problems += _rules_problems(track.rules, f"tracks[{index}].rules", model, templates)
    problems += _experiment_problems(model)
    if model.default_track is not None and model.default_track not in {t.key for t in model.tracks}:
        problems.append(PlaybookProblem(
            "default_track", f"unknown track {model.default_track!r}",
            f"name one of the tracks: {', '.join(t.key for t in model.tracks)}"))
    return problems


def _rules_problems(rules: list[Rule], place: str, model: Playbook,
                    templates: dict[str, Any]) -> list[PlaybookProblem]:
    problems = _duplicates(place, [rule.key for rule in rules])
    for index, rule in enumerate(rules):
        here = f"{place}[{index}]"
        for key, happening in (("on", rule.on), ("unless", rule.unless)):
            problems += _happening_problems(happening, f"{here}.{key}", model)
        problems += _actions_problems(rule.actions, f"{here}.actions", templates)
        problems += _where_problems(rule.where, f"{here}.where", model)
        problems += _duplicates(f"{here}.escalations", [e.key for e in rule.escalations])
        for number, escalation in enumerate(rule.escalations):
            there = f"{here}.escalations[{number}]"
            problems += _happening_problems(escalation.unless, f"{there}.unless", model)
            problems += _actions_problems(escalation.actions, f"{there}.actions", templates)
            problems += _where_problems(escalation.where, f"{there}.where", model)
    return problems


def _experiment_problems(model: Playbook) -> list[PlaybookProblem]:
    """Experiments: their keys, block sizes, milestone, filters, and the variants' rules and
    templates, checked like the playbook's own. Two experiments may not override the same rule
    or template: an account in both would get one of them at random."""
    problems = _duplicates("experiments", [e.key for e in model.experiments])
    milestones = [m.key for m in model.milestones]
    every_template = {**model.templates}
    for track in model.tracks:
        every_template |= track.templates
    owners: dict[tuple[str, str], str] = {}
    for index, experiment in enumerate(model.experiments):
        here = f"experiments[{index}]"
        problems += _duplicates(f"{here}.variants", [v.key for v in experiment.variants])
        count = len(experiment.variants)
        if experiment.block_size is not None and experiment.block_size % count:
            problems.append(PlaybookProblem(
                f"{here}.block_size", f"a block of {experiment.block_size} cannot hold the "
                f"{count} variants equally often",
                f"use a multiple of {count}, such as {count * 2}, or leave it out"))
        if experiment.milestone is not None and experiment.milestone not in milestones:
            problems.append(PlaybookProblem(
                f"{here}.milestone", f"unknown milestone {experiment.milestone!r}",
                f"use one of: {', '.join(milestones)}"))
        problems += _where_problems(experiment.where, f"{here}.where", model)
        for number, variant in enumerate(experiment.variants):
            there = f"{here}.variants[{number}]"
            templates = {**every_template, **variant.templates}
            problems += _rules_problems(variant.rules, f"{there}.rules", model, templates)
            problems += _template_problems(variant.templates, f"{there}.templates")
            overridden = [("rule", r.key, f"{there}.rules[{i}].key")
                          for i, r in enumerate(variant.rules)]
            overridden += [("template", key, f"{there}.templates.{key}")
                           for key in variant.templates]
            for kind, key, place in overridden:
                owner = owners.setdefault((kind, key), experiment.key)
                if owner != experiment.key:
                    problems.append(PlaybookProblem(
                        place, f"the {kind} {key!r} is overridden by experiment {owner!r} too",
                        f"let one experiment own the {kind} {key!r}, or give this variant "
                        f"a {kind} of its own"))
    return problems


def _template_problems(templates: dict[str, Any], place: str) -> list[PlaybookProblem]:
    from firstvalue.actions.templates import check_template

    problems = []
    for key, template in templates.items():
        for part in ("subject", "body"):
            source = getattr(template, part)
            error = check_template(source) if source else None
            if error:
                problems.append(PlaybookProblem(
                    f"{place}.{key}.{part}", f"the template does not parse: {error.rstrip('.')}",
                    "fix the Jinja2 syntax ({{ value }}, {% if %}...{% endif %})"))
    return problems


def _stall_problems(model: Playbook) -> list[PlaybookProblem]:
    problems = _duplicates("stalls", [stall.key for stall in model.stalls])
    known = sorted(model.meanings)
    for index, stall in enumerate(model.stalls):
        for number, meaning in enumerate(stall.activity if stall.kind == "champion_silent"
                                         else []):
            if meaning not in model.meanings:
                problems.append(PlaybookProblem(
                    f"stalls[{index}].activity[{number}]", f"unknown meaning {meaning!r}",
                    f"use one of: {', '.join(known)}"))
        if stall.when is not None:
            problems += _condition_problems(stall.when, f"stalls[{index}].when",
                                            set(model.meanings))
        problems += _happening_problems(stall.until, f"stalls[{index}].until", model)
    problems += _duplicates("interventions", [i.key for i in model.interventions])
    for index, intervention in enumerate(model.interventions):
        problems += _actions_problems(intervention.actions, f"interventions[{index}].actions",
                                      model.templates)
        problems += _where_problems(intervention.where, f"interventions[{index}].where", model)
    diagnosis = model.diagnosis
    for place, meaning in (("ticket_meaning", diagnosis.ticket_meaning),
                           ("feature_meaning", diagnosis.feature_meaning),
                           *((f"blocker_meanings[{i}]", m)
                             for i, m in enumerate(diagnosis.blocker_meanings))):
        if model.stalls and meaning not in model.meanings:
            problems.append(PlaybookProblem(f"diagnosis.{place}", f"unknown meaning {meaning!r}",
                                            f"use one of: {', '.join(known)}"))
    return problems


def _happening_problems(happening: Happening | None, place: str,
                        model: Playbook) -> list[PlaybookProblem]:
    if happening is None:
        return []
    milestones = [m.key for m in model.milestones]
    if happening.milestone is not None and happening.milestone not in milestones:
        return [PlaybookProblem(f"{place}.milestone", f"unknown milestone {happening.milestone!r}",
                                f"use one of: {', '.join(milestones)}")]
    if happening.meaning is not None and happening.meaning not in model.meanings:
        return [PlaybookProblem(f"{place}.meaning", f"unknown meaning {happening.meaning!r}",
                                f"define it under `meanings` or use one of: "
                                f"{', '.join(sorted(model.meanings))}")]
    return []


def _actions_problems(actions: list[Any], place: str,
                      templates: dict[str, Any]) -> list[PlaybookProblem]:
    problems = []
    for index, action in enumerate(actions):
        if action.template is not None and action.template not in templates:
            problems.append(PlaybookProblem(
                f"{place}[{index}].template", f"unknown template {action.template!r}",
                f"add it under `templates` or use one of: {', '.join(sorted(templates))}"))
        if action.kind in ("email", "slack", "in_app", "task") and action.template is None:
            problems.append(PlaybookProblem(
                f"{place}[{index}]", f"a {action.kind} action needs a template",
                "add `template: KEY` naming one of `templates`"))
    return problems


def _where_problems(where: dict[str, Any], place: str, model: Playbook) -> list[PlaybookProblem]:
    wanted = where.get("track")
    if wanted is None:
        return []
    known = [t.key for t in model.tracks]
    names = wanted if isinstance(wanted, list) else [wanted]
    return [PlaybookProblem(f"{place}.track", f"unknown track {name!r}",
                            f"use one of: {', '.join(known)}")
            for name in names if name not in known]


def _track_problems(track: Any, place: str, milestone_keys: list[str],
                    meanings: set[str]) -> list[PlaybookProblem]:
    problems: list[PlaybookProblem] = []
    for key in track.targets:
        if key not in milestone_keys:
            problems.append(PlaybookProblem(
                f"{place}.targets.{key}", f"unknown milestone {key!r}",
                f"use one of: {', '.join(milestone_keys)}"))
    for index, milestone in enumerate(track.milestones):
        if milestone.key not in milestone_keys:
            problems.append(PlaybookProblem(
                f"{place}.milestones[{index}].key",
                f"a track can only override a playbook milestone, not add {milestone.key!r}",
                f"use one of: {', '.join(milestone_keys)}"))
        problems += _condition_problems(milestone.when, f"{place}.milestones[{index}].when",
                                        meanings)
    return problems


def _condition_problems(condition: Condition, place: str,
                        meanings: set[str]) -> list[PlaybookProblem]:
    if isinstance(condition, AllOf | AnyOf):
        parts = condition.all_of if isinstance(condition, AllOf) else condition.any_of
        key = "all_of" if isinstance(condition, AllOf) else "any_of"
        problems: list[PlaybookProblem] = []
        for index, part in enumerate(parts):
            problems += _condition_problems(part, f"{place}.{key}[{index}]", meanings)
        return problems
    if isinstance(condition, EventCondition) and condition.meaning is not None:
        wanted = [condition.meaning] if isinstance(condition.meaning, str) else condition.meaning
        return [PlaybookProblem(f"{place}.meaning", f"unknown meaning {name!r}",
                                f"define it under `meanings` or use one of: "
                                f"{', '.join(sorted(meanings))}")
                for name in wanted if name not in meanings]
    if isinstance(condition, UsersCondition):
        return [PlaybookProblem(f"{place}.of", f"{name!r} is neither a meaning nor an event name",
                                "give a key of `meanings` or an event name such as 'Workflow Run'")
                for name in condition.of if name not in meanings and _looks_like_key(name)]
    return []


def _looks_like_key(name: str) -> bool:
    """A snake_case word is meant as a meaning; event names follow 'Object Action'."""
    return name.islower() and " " not in name


def _duplicates(place: str, keys: list[str]) -> list[PlaybookProblem]:
    seen: set[str] = set()
    problems = []
    for index, key in enumerate(keys):
        if key in seen:
            problems.append(PlaybookProblem(f"{place}[{index}].key", f"duplicate key {key!r}",
                                            "give every entry its own key"))
        seen.add(key)
    return problems


def _timezone_problems(place: str, name: str) -> list[PlaybookProblem]:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [PlaybookProblem(place, f"unknown timezone {name!r}",
                                "use an IANA name such as Europe/Berlin or UTC")]
    return []
