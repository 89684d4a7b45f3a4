"""Experiments in the playbook: the playbook an account in a variant is evaluated with.

A variant's templates are kept under their own key (`EXPERIMENT.VARIANT.TEMPLATE`) and added to
the playbook's templates, so that the dispatcher, which renders by key, finds them whatever
variant planned the action. In a variant's playbook, the rules that use an overridden template
point at the variant's copy, and the variant's rules replace the rules of the same key (the
playbook's and every track's) or come on top.
"""

from __future__ import annotations

from collections.abc import Sequence

from firstvalue.playbook.model import ActionSpec, Experiment, Playbook, Rule, Variant


def variant_template_key(experiment: str, variant: str, template: str) -> str:
    return f"{experiment}.{variant}.{template}"


def with_variant_templates(model: Playbook) -> Playbook:
    """The playbook with every variant's templates added under their own keys."""
    added = {variant_template_key(e.key, v.key, key): template
             for e in model.experiments for v in e.variants
             for key, template in v.templates.items()}
    if not added:
        return model
    return model.model_copy(update={"templates": {**model.templates, **added}})


def find_variant(experiment: Experiment, key: str) -> Variant | None:
    return next((v for v in experiment.variants if v.key == key), None)


def variant_model(model: Playbook, chosen: Sequence[tuple[str, str]]) -> Playbook:
    """The playbook as an account in the `chosen` (experiment, variant) pairs sees it."""
    experiments = {e.key: e for e in model.experiments}
    for experiment_key, variant_key in chosen:
        variant = find_variant(experiments[experiment_key], variant_key)
        if variant is not None:
            model = _apply(model, experiment_key, variant)
    return model


def _apply(model: Playbook, experiment: str, variant: Variant) -> Playbook:
    renamed = {key: variant_template_key(experiment, variant.key, key) for key in variant.templates}
    replacing = {rule.key: _retemplate(rule, renamed) for rule in variant.rules}

    def swap(rules: Sequence[Rule]) -> list[Rule]:
        return [replacing.get(rule.key) or _retemplate(rule, renamed) for rule in rules]

    rules = swap(model.rules)
    known = {rule.key for rule in model.rules} | {r.key for t in model.tracks for r in t.rules}
    rules += [rule for key, rule in replacing.items() if key not in known]
    tracks = [track.model_copy(update={"rules": swap(track.rules)}) for track in model.tracks]
    return model.model_copy(update={"rules": rules, "tracks": tracks})


def _retemplate(rule: Rule, renamed: dict[str, str]) -> Rule:
    if not renamed:
        return rule

    def actions(specs: Sequence[ActionSpec]) -> list[ActionSpec]:
        return [spec.model_copy(update={"template": renamed[spec.template]})
                if spec.template in renamed else spec for spec in specs]

    escalations = [e.model_copy(update={"actions": actions(e.actions)}) for e in rule.escalations]
    return rule.model_copy(update={"actions": actions(rule.actions), "escalations": escalations})
