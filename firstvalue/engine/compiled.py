"""A playbook made ready for evaluation: meanings resolved, detectors compiled, tracks indexed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from firstvalue.engine.conditions import Detector, compile_condition, traits_fit
from firstvalue.playbook.loader import LoadedPlaybook
from firstvalue.playbook.model import Rule, Template, Track


@dataclass(frozen=True)
class CompiledMilestone:
    key: str
    name: str
    detector: Detector


@dataclass(frozen=True)
class CompiledTrack:
    track: Track
    milestones: tuple[CompiledMilestone, ...]
    rules: tuple[Rule, ...] = ()
    templates: dict[str, Template] = field(default_factory=dict)
    path: str | None = None  # the onboarding path (by use case) this variant of the track is

    @property
    def key(self) -> str:
        return self.track.key


@dataclass(frozen=True)
class CompiledPlaybook:
    loaded: LoadedPlaybook
    tracks: tuple[CompiledTrack, ...]
    default_track: CompiledTrack | None
    contract_names: frozenset[str]
    restart_names: frozenset[str]
    kickoff_completed_names: frozenset[str]
    kickoff_scheduled_names: frozenset[str]
    login_names: frozenset[str]
    relevant_names: frozenset[str]
    path_tracks: dict[tuple[str, str], CompiledTrack] = field(default_factory=dict)
    # Each use case (as `use_case_key` spells it) and its path: the first path naming it wins.
    path_of_use_case: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def anchor_names(self) -> frozenset[str]:
        return (self.contract_names | self.restart_names | self.kickoff_completed_names
                | self.kickoff_scheduled_names)

    def choose_tier(self, traits: Mapping[str, Any]) -> int | None:
        """The tier from the playbook's tier rules (first match wins), else the `tier` trait
        (shared/DESIGN.md "Accounts, runs and anchors")."""
        for rule in self.loaded.model.tiers:
            if traits_fit(rule.where, traits):
                return rule.tier
        return tier_trait(traits.get("tier"))

    def on_path(self, track: CompiledTrack | None, use_case: Any) -> CompiledTrack | None:
        """The track as the onboarding path of this use case shapes it (its milestones and
        templates), or the track itself when no path names the use case."""
        if track is None or not isinstance(use_case, str):
            return track
        path = self.path_of_use_case.get(use_case_key(use_case))
        return track if path is None else self.path_tracks.get((track.key, path), track)

    def choose_track(self, traits: dict[str, Any]) -> CompiledTrack | None:
        """The first track whose `match` fits the traits (shared/DESIGN.md: first match wins)."""
        for compiled in self.tracks:
            if traits_match(compiled.track.match, traits):
                return compiled
        return self.default_track


def _on_path(track: CompiledTrack, path: Any, meanings: Any) -> CompiledTrack:
    """The track with the path's milestone definitions and templates in place."""
    overrides = {m.key: m for m in path.milestones}
    milestones = tuple(
        CompiledMilestone(m.key, overrides[m.key].name or m.name,
                          compile_condition(overrides[m.key].when, meanings))
        if m.key in overrides else m for m in track.milestones)
    return CompiledTrack(track.track, milestones, track.rules,
                         {**track.templates, **path.templates}, path.key)


def use_case_key(text: str) -> str:
    """A use case as paths compare it: "Lead enrichment", "lead-enrichment" and
    "lead_enrichment" are one use case."""
    return "_".join(text.replace("-", " ").replace("_", " ").lower().split())


def tier_trait(value: Any) -> int | None:
    """The `tier` trait as a tier: 1, 2 or 3 (`"2"` counts as 2); anything else is none."""
    try:
        tier = None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return tier if tier in (1, 2, 3) else None


def traits_match(match: Mapping[str, Any], traits: Mapping[str, Any],
                 track: str | None = None) -> bool:
    """Whether an account fits a `match` or `where` filter: every key holds one of its values
    (`track` names the account's track; any other key a trait). Numbers and text compare by
    their text too, so `tier: 1` matches a tier sent as "1"."""
    for key, wanted in match.items():
        value = track if key == "track" else traits.get(key)
        options = wanted if isinstance(wanted, list) else [wanted]
        if value not in options and str(value) not in [str(o) for o in options]:
            return False
    return True


@lru_cache(maxsize=16)
def compile_playbook(loaded: LoadedPlaybook) -> CompiledPlaybook:
    model = loaded.model
    meanings = model.meanings
    base = {m.key: m for m in model.milestones}

    tracks = []
    for track in model.tracks:
        overrides = {m.key: m for m in track.milestones}
        milestones = tuple(
            CompiledMilestone(key, (overrides.get(key) or m).name or m.name or key,
                              compile_condition((overrides.get(key) or m).when, meanings))
            for key, m in base.items())
        rules = {rule.key: rule for rule in model.rules}
        rules.update({rule.key: rule for rule in track.rules})
        templates = {**model.templates, **track.templates}
        tracks.append(CompiledTrack(track, milestones, tuple(rules.values()), templates))

    by_key = {t.key: t for t in tracks}
    path_tracks = {(t.key, path.key): _on_path(t, path, meanings)
                   for t in tracks for path in model.paths}
    anchors = model.anchors

    def names(key: str) -> frozenset[str]:
        return frozenset(meanings.get(key, []))

    every = [*tracks, *path_tracks.values()]
    relevant = frozenset().union(*(m.detector.names for t in every for m in t.milestones))
    relevant |= _rule_event_names(tracks, meanings)
    relevant |= _stall_event_names(model, meanings)
    compiled = CompiledPlaybook(
        loaded=loaded,
        tracks=tuple(tracks),
        default_track=by_key.get(model.default_track) if model.default_track else None,
        contract_names=names(anchors.contract_signed.meaning),
        restart_names=names(anchors.contract_signed.restart_meaning),
        kickoff_completed_names=names(anchors.kickoff.completed),
        kickoff_scheduled_names=names(anchors.kickoff.scheduled),
        login_names=names(model.login),
        relevant_names=relevant,
        path_tracks=path_tracks,
        path_of_use_case=_path_of_use_case(model.paths),
    )
    return _with_relevant(compiled)


def _path_of_use_case(paths: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        for use_case in path.use_case:
            found.setdefault(use_case_key(use_case), path.key)
    return found


def _rule_event_names(tracks: list[CompiledTrack],
                      meanings: dict[str, list[str]]) -> frozenset[str]:
    names: set[str] = set()
    for track in tracks:
        for rule in track.rules:
            happenings = [rule.on, rule.unless] + [e.unless for e in rule.escalations]
            for happening in happenings:
                if happening is None:
                    continue
                if happening.meaning is not None:
                    names |= set(meanings.get(happening.meaning, []))
                if happening.event is not None:
                    names.add(happening.event)
    return frozenset(names)


def _stall_event_names(model: Any, meanings: dict[str, list[str]]) -> frozenset[str]:
    """The events stall detection and diagnosis read, when the playbook has stalls."""
    if not model.stalls:
        return frozenset()
    keys = {model.login, "call_missed", "call_rescheduled", "call_cancelled", "call_scheduled",
            "call_completed", model.diagnosis.ticket_meaning, model.diagnosis.feature_meaning,
            *model.diagnosis.blocker_meanings}
    names: set[str] = set()
    for stall in model.stalls:
        keys |= set(stall.activity)
        if stall.when is not None:
            names |= compile_condition(stall.when, meanings).names
        if stall.until is not None:
            keys.add(stall.until.meaning or "")
            names.add(stall.until.event or "")
    return frozenset(names | {name for key in keys for name in meanings.get(key, [])})


def _with_relevant(compiled: CompiledPlaybook) -> CompiledPlaybook:
    """The event names the engine reads: the rest need not be loaded from the store."""
    # Logins are not read yet (no milestone or rule counts them in the default playbook); a
    # milestone or rule on the login meaning brings them in through its detector's names.
    relevant = compiled.relevant_names | compiled.anchor_names
    return CompiledPlaybook(**{**compiled.__dict__, "relevant_names": relevant})
