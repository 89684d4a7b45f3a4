"""The playbook file: validation with places and fixes, the schema, the version."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from firstvalue.cli.main import cli
from firstvalue.errors import PlaybookError
from firstvalue.playbook.loader import load_playbook, parse_playbook, read_default_text
from tests.test_engine_milestones import custom_playbook_text

HEAD = """name: t
meanings: {login: [Signed In], contract_signed: [Deal Closed Won],
           kickoff_completed: [Kickoff Completed], kickoff_scheduled: [Kickoff Scheduled],
           value_delivered: [Value Delivered]}
"""


def problems_of(text: str) -> dict[str, str]:
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(text, "test.yaml")
    return {p.location: f"{p.message} | {p.fix} | line {p.line}" for p in caught.value.problems}


def test_the_default_playbook_has_five_milestones_and_three_tracks():
    model = load_playbook().model
    assert [m.key for m in model.milestones] == [
        "account_configured", "data_connected", "first_workflow", "first_value", "second_user"]
    targets = {t.key: [t.targets[m.key] for m in model.milestones] for t in model.tracks}
    assert targets == {"smb": [1, 2, 3, 5, 14], "mid_market": [3, 7, 14, 21, 30],
                       "enterprise": [5, 14, 30, 45, 60]}
    assert {t.key: (t.ttv_target, t.end_day, t.kickoff) for t in model.tracks} == {
        "smb": (5, 90, False), "mid_market": (30, 90, True), "enterprise": (60, 120, True)}
    assert model.phases == ["contract_signed", "kickoff", "account_configured",
                            "first_workflow", "first_value"]


def test_every_problem_is_reported_with_its_place_line_and_fix():
    found = problems_of(HEAD + """milestones:
  - key: first_value
    when: {meaning: value_delivered}
  - key: b
    when: {event: X, count: 0}
  - key: Bad
    when: {meaning: value_delivered, colour: red}
tracks:
  - key: t
""")
    assert set(found) == {"milestones[1].when.count", "milestones[2].key",
                          "milestones[2].when.colour"}
    assert "greater than or equal to 1" in found["milestones[1].when.count"]
    assert found["milestones[1].when.count"].endswith("line 9")
    assert "'Bad' is not a valid key" in found["milestones[2].key"].replace('"', "'")
    assert "unknown key 'colour'" in found["milestones[2].when.colour"]


BROKEN_REFERENCES = HEAD + """milestones:
  - key: first_value
    when:
      all_of:
        - {meaning: data_conected}
        - {users: 2, of: [meaningfull_action]}
phases: [contract_signed, kickof]
tracks:
  - key: t
    targets: {first_vale: 3}
default_track: nope
timezone: Mars/Olympus
"""


def test_references_between_keys_are_checked_with_the_known_keys_in_the_fix():
    found = problems_of(BROKEN_REFERENCES)
    assert "unknown meaning 'data_conected'" in found["milestones[0].when.all_of[0].meaning"]
    assert "value_delivered" in found["milestones[0].when.all_of[0].meaning"]
    assert "milestones[0].when.all_of[1].of" in found
    assert "unknown checkpoint 'kickof'" in found["phases[1]"]
    assert "use one of: first_value" in found["tracks[0].targets.first_vale"]
    assert "default_track" in found and "timezone" in found


def test_problems_come_in_the_order_of_the_file():
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(BROKEN_REFERENCES, "test.yaml")
    lines = [p.line for p in caught.value.problems]
    assert len(lines) >= 4 and None not in lines[:4]
    assert lines == sorted(lines, key=lambda line: (line is None, line or 0))


def test_a_file_that_is_not_yaml_names_the_line():
    found = problems_of("milestones: [\n  - key: x\n")
    assert list(found) == [""]
    assert "not valid YAML" in found[""]


def test_the_version_changes_with_the_content():
    text = read_default_text()
    first = parse_playbook(text, "a").version
    second = parse_playbook(text.replace("end_day: 120", "end_day: 121"), "a").version
    assert first.startswith("default@2026.12+") and second != first


def test_playbook_check_exits_1_and_lists_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "milestones: []\ntracks: []\n")
    result = CliRunner().invoke(cli, ["playbook", "check", str(bad), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["valid"] is False
    assert {p["location"] for p in report["problems"]} == {"milestones", "tracks"}


def test_playbook_check_accepts_the_default_and_schema_is_json_schema(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(read_default_text())
    result = CliRunner().invoke(cli, ["playbook", "check", str(good)])
    assert result.exit_code == 0 and "valid (5 milestones, 3 tracks)" in result.output
    schema = json.loads(CliRunner().invoke(cli, ["playbook", "schema"]).output)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"milestones", "tracks", "meanings"} <= set(schema["properties"])


def test_a_missing_playbook_file_is_a_clear_error(tmp_path):
    with pytest.raises(PlaybookError, match="cannot read the file"):
        load_playbook(tmp_path / "nope.yaml")


def test_an_unquoted_version_is_refused_with_a_fix_that_keeps_its_trailing_zero():
    text = read_default_text()
    assert '\nversion: "2026.12"' in text
    found = problems_of(text.replace('\nversion: "2026.12"', "\nversion: 2026.10"))
    assert list(found) == ["version"]
    assert found["version"].startswith("2026.1 is a number here, not text | put the value in "
                                       "quotes")
    assert 'write "2026.10"' in found["version"]


def test_playbook_check_counts_one_milestone_and_one_track_in_the_singular(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text(custom_playbook_text("""milestones:
  - key: first_value
    when: {meaning: value_delivered}
"""))
    result = CliRunner().invoke(cli, ["playbook", "check", str(small)])
    assert result.exit_code == 0, result.output
    assert "valid (1 milestone, 1 track)" in result.output


def test_an_unknown_track_in_an_interventions_where_is_reported():
    from firstvalue.playbook.loader import read_default_text

    head, interventions = read_default_text().split("\ninterventions:", 1)
    assert "    where: {tier: [1, 2]}" in interventions
    broken = head + "\ninterventions:" + interventions.replace(
        "    where: {tier: [1, 2]}", "    where: {track: [tier1]}", 1)
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(broken, "test.yaml")
    found = {p.location: p.message for p in caught.value.problems}
    assert any(place.startswith("interventions[") and place.endswith("].where.track")
               and message == "unknown track 'tier1'" for place, message in found.items()), found


def window_problems(window: str) -> dict[str, str]:
    return problems_of(HEAD + f"""milestones:
  - key: first_value
    when: {{meaning: value_delivered}}
tracks:
  - key: t
send_window: {window}
""")


def test_a_send_window_time_that_is_not_hh_mm_says_so():
    found = window_problems('{start: "9am", end: "25:00"}')
    for place, value in (("send_window.start", '"9am"'), ("send_window.end", '"25:00"')):
        assert found[place].startswith(f'{value} is not a time of day | write it as HH:MM '
                                       'on the 24-hour clock'), found[place]


def test_a_send_window_that_closes_before_it_opens_says_so_plainly():
    found = window_problems('{start: "17:00", end: "09:00"}')
    assert found["send_window"].startswith(
        "the window opens at 17:00 and closes at 09:00; the opening must come first | "), found
