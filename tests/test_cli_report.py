"""`firstvalue report`: the options, the files it writes, and its errors."""

from __future__ import annotations

import csv
import json
from collections import Counter

from tests.test_cli import NOW, loaded, run  # noqa: F401 (loaded is a fixture)


def test_report_json_holds_every_analytics_section(loaded):  # noqa: F811
    code, output = run("--db", loaded, "report", "--json", "--now", NOW, "--by", "tier")
    assert code == 0, output
    report = json.loads(output)
    for key in ("ttv", "ttv_targets", "phases", "funnel", "stalls", "retention", "expansion",
                "experiments", "cohort_heatmap"):
        assert key in report
    assert report["by"] == "tier" and report["ttv"][0]["group"] == "2"
    # acme: signed 03-01, value 03-15 (14 days) -> one observed run, median 14.
    assert (report["ttv"][0]["median_days"], report["ttv"][0]["censored"]) == (14, 0)


def test_a_bad_by_or_now_is_refused_with_the_value_and_the_choices(loaded):  # noqa: F811
    code, output = run("--db", loaded, "report", "--by", "region")
    assert code == 2 and "'region'" in output and "segment" in output and "cohort" in output
    code, output = run("--db", loaded, "report", "--now", "2026-13-01T00:00:00Z")
    assert code == 2 and "is not an ISO 8601 time" in output


def test_csv_drill_down_matches_the_funnel_counts_and_charts_are_drawn(loaded,  # noqa: F811
                                                                       tmp_path):
    code, output = run("--db", loaded, "report", "--json", "--now", NOW, "--csv",
                       str(tmp_path / "csv"), "--charts", str(tmp_path / "charts"))
    assert code == 0, output
    report = json.loads(output)
    with (tmp_path / "csv" / "funnel_accounts.csv").open() as handle:
        listed = Counter((row["milestone"], row["status"]) for row in csv.DictReader(handle))
    for row in report["funnel"]["milestones"]:
        for status in ("eligible", "reached", "on_time", "open"):
            assert listed[(row["key"], status)] == row[status]
    for name in ("ttv_kaplan_meier", "funnel", "cohorts"):
        assert (tmp_path / "charts" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (tmp_path / "charts" / f"{name}.svg").read_text()


def test_the_demo_prints_every_analytics_section_and_writes_the_charts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = run("demo", "--accounts", "30", "--today", "2026-12-04")
    assert code == 0, output
    for title in ("Time-to-value by segment (Kaplan-Meier", "Time-to-value against target",
                  "bottleneck", "with stall rates", "Most accounts stall at:",
                  "90-day retention by onboarding cohort", "Experiment early_crm_tutorial",
                  "log-rank p"):
        assert title in output, title
    for name in ("ttv_kaplan_meier", "funnel", "cohorts"):
        for suffix in ("png", "svg"):
            assert (tmp_path / "firstvalue-demo-charts" / f"{name}.{suffix}").stat().st_size


def test_a_table_on_an_80_column_terminal_cuts_no_count_name_or_header():
    import io

    from rich.table import Table

    from firstvalue.cli.views import WholeWordsConsole

    columns = ("rule", "kind", "sent", "late", "pending", "cancelled", "suppressed", "failed",
               "dead", "resolved")
    row = ("template_recommendation.session", "email", "199", "0", "1", "127", "0", "0", "0",
           "42")
    wide, narrow = Table(title="by rule"), Table(title="notes")
    for column in columns:
        wide.add_column(column)
    wide.add_row(*row)
    narrow.add_column("segment")
    narrow.add_column("note")
    narrow.add_row("mid_market", "a sentence long enough to need more than one line " * 3)

    # Rich measures this one as fitting 80 columns, yet draws it wider (as the report did).
    targets = Table(title="Time-to-value against target, per track")
    headers = ("track", "product type", "median days", "playbook target", "on target",
               "reference target", "industry average")
    for header in headers:
        targets.add_column(header, justify="left" if header == "track" else "right")
    targets.add_row("enterprise", "enterprise", "111", "60", "no", "under 30", "60 to 120")

    out = io.StringIO()
    terminal = WholeWordsConsole(width=80, file=out, highlight=False)
    terminal.print(wide)
    terminal.print(narrow)
    terminal.print(targets)
    text = out.getvalue()
    assert "…" not in text
    words = text.replace("│", " ").replace("┃", " ").split()
    for word in (*columns, *row, "mid_market", *" ".join(headers).split(), "120", "under"):
        assert word in words, word
    assert all(line.rstrip().endswith(("┓", "┃", "┩", "│", "┘", "┛"))
               for line in text[text.index("Time-to-value"):].splitlines()[1:] if line.strip())
    # A table that fits folds its long text onto more lines rather than widening.
    notes = text[text.index("notes"):text.index("Time-to-value")]
    assert max(len(line) for line in notes.splitlines()) <= 80


def test_the_text_report_keeps_each_table_title_on_one_line(loaded):  # noqa: F811
    code, output = run("--db", loaded, "report", "--now", NOW)
    assert code == 0
    lines = [line.strip() for line in output.splitlines()]
    assert "90-day retention by activation (every milestone done by day 90)" in lines
