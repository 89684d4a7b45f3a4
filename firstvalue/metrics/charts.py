"""The report's charts as Vega-Lite specs (altair), drawn to PNG and SVG by vl-convert.

- Kaplan-Meier curves: the share of runs not at first value yet, by day, one line a group;
- the funnel: eligible, reached and on-time runs per milestone;
- the cohort heatmap: per onboarding cohort, the share of eligible runs that reached each
  milestone, and the 90-day retention of complete cohorts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def survival_chart(report: dict[str, Any]) -> Any:
    import altair as alt

    rows = [{"group": g["group"], "day": p["day"], "not yet at value": p["survival"]}
            for g in report["ttv"] for p in g["curve"]]
    return alt.Chart(alt.Data(values=rows)).mark_line(interpolate="step-after").encode(
        x=alt.X("day:Q", title="days since contract signed"),
        y=alt.Y("not yet at value:Q", title="share not at first value yet",
                scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("group:N", title=report["by"]),
    ).properties(title="Time-to-value (Kaplan-Meier, censored)", width=520, height=300)


def funnel_chart(report: dict[str, Any]) -> Any:
    import altair as alt

    order = [row["key"] for row in report["funnel"]["milestones"]]
    rows = [{"milestone": row["key"], "count": row[status], "status": status}
            for row in report["funnel"]["milestones"]
            for status in ("eligible", "reached", "on_time")]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("milestone:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20)),
        xOffset=alt.XOffset("status:N", sort=["eligible", "reached", "on_time"]),
        y=alt.Y("count:Q", title="runs"),
        color=alt.Color("status:N", sort=["eligible", "reached", "on_time"]),
    ).properties(title=f"Funnel ({report['funnel']['mode']} order)", width=520, height=300)


def cohort_chart(report: dict[str, Any]) -> Any:
    import altair as alt

    rows = [{"cohort": c["cohort"], "measure": c["measure"], "share": c["share"]}
            for c in report.get("cohort_heatmap", [])]
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("measure:N", sort=None, title=None, axis=alt.Axis(labelAngle=-20)),
        y=alt.Y("cohort:O", title="cohort"))
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=alt.Scale(domain=[0, 1], scheme="blues")))
    # Light text on the dark end of the scale, dark text on the light end: both stay legible.
    labels = base.mark_text().encode(
        text=alt.Text("share:Q", format=".0%"),
        color=alt.condition("datum.share > 0.6", alt.value("white"), alt.value("black")),
    ).transform_filter("datum.share != null")
    return (cells + labels).properties(title="Onboarding cohorts", width=520, height=260)


def write_charts(report: dict[str, Any], directory: Path) -> list[Path]:
    import vl_convert

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    charts = {"ttv_kaplan_meier": survival_chart(report), "funnel": funnel_chart(report),
              "cohorts": cohort_chart(report)}
    for name, chart in charts.items():
        spec = chart.to_dict()
        png, svg = directory / f"{name}.png", directory / f"{name}.svg"
        png.write_bytes(vl_convert.vegalite_to_png(spec, scale=2))
        svg.write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
        written += [png, svg]
    return written
