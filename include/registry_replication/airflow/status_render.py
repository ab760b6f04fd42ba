"""The status page's HTML: the Jinja template (``templates/status.html``, package data) with its
filters, and the lag chart, an SVG drawn on the server (no script on the page)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup, escape

from registry_replication.outcomes import human_size


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else _ago(seconds).removesuffix(" ago")


def _when(iso: str | None) -> str:
    if not iso:
        return ""
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _label(key: str) -> str:
    return key.replace("_", " ")


# The page is a Jinja template file shipped in the package (package data).
_env = Environment(
    loader=PackageLoader("registry_replication.airflow", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(bytes=human_size, ago=_ago, duration=_duration, when=_when, label=_label)

_TEMPLATE = _env.get_template("status.html")


def render(data: dict[str, Any], *, json_url: str = "api/status", csrf: str | None = None) -> str:
    """The page for a ``status()`` result; ``csrf``: the token its forms send back."""
    return _TEMPLATE.render(
        s=data,
        json_url=json_url,
        csrf=csrf,
        chart=lag_chart(data["history"]) if "history" in data else "",
    )


# -- the lag chart (server-rendered SVG) -------------------------------------------------------

_WIDTH, _LEFT, _RIGHT, _PANEL, _GAP = 1000, 78, 16, 96, 34


def lag_chart(history: dict[str, Any]) -> Markup:
    """Three panels over one time axis: pending depth, push-to-replica seconds, bytes per run."""
    since = dt.datetime.fromisoformat(history["since"]).timestamp()
    until = dt.datetime.fromisoformat(history["until"]).timestamp()
    plot = _WIDTH - _LEFT - _RIGHT

    def x(iso: str) -> float:
        at = dt.datetime.fromisoformat(iso).timestamp()
        return _LEFT + plot * min(max((at - since) / (until - since), 0.0), 1.0)

    parts: list[str] = []
    depth = history["pending_depth"]
    latency = history["push_to_replica"]
    runs = history["bytes_per_run"]
    panels = (
        ("Pending events (max per 5 min)", max([p["depth"] for p in depth] + [1]), str),
        ("Push to replica (s)", max([p["seconds"] for p in latency] + [1.0]), _seconds),
        ("Bytes copied per reconcile run", max([r["bytes"] for r in runs] + [1]), human_size),
    )
    tops = []
    for i, (title, top, fmt) in enumerate(panels):
        y0 = 18 + i * (_PANEL + _GAP)
        tops.append((y0, top))
        parts.append(f'<text class="title" x="{_LEFT}" y="{y0 - 5}">{escape(title)}</text>')
        for frac in (0, 0.5, 1):
            gy = y0 + _PANEL * (1 - frac)
            parts.append(
                f'<line class="grid" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{gy:.1f}" '
                f'y2="{gy:.1f}"/><text x="{_LEFT - 6}" y="{gy + 4:.1f}" '
                f'text-anchor="end">{escape(fmt(top * frac))}</text>'
            )

    def y(panel: int, value: float) -> float:
        y0, top = tops[panel]
        return y0 + _PANEL * (1 - value / top)

    # A step line: each bucket's depth holds from its start to the next bucket's.
    starts = [x(point["at"]) for point in depth] + [float(_WIDTH - _RIGHT)]
    step = [
        f"{starts[i + k]:.1f},{y(0, point['depth']):.1f}"
        for i, point in enumerate(depth)
        for k in (0, 1)
    ]
    peak = max((p["depth"] for p in depth), default=0)
    parts.append(f'<polyline class="depth-line" data-peak="{peak}" points="{" ".join(step)}"/>')
    for point in latency:
        parts.append(
            f'<circle class="latency-point" data-seconds="{point["seconds"]}" '
            f'data-secondary="{escape(point["secondary"])}" '
            f'cx="{x(point["at"]):.1f}" cy="{y(1, point["seconds"]):.1f}" r="3">'
            f"<title>{escape(point['secondary'])} {escape(point['at'])}: {point['seconds']} s"
            "</title></circle>"
        )
    for run in runs:
        rx, ry = x(run["finished_at"]), y(2, run["bytes"])
        height = max(tops[2][0] + _PANEL - ry, 1)
        parts.append(
            f'<rect class="bytes-bar {escape(run["state"])}" data-bytes="{run["bytes"]}" '
            f'data-run-id="{escape(run["run_id"])}" x="{rx - 3:.1f}" y="{ry:.1f}" width="6" '
            f'height="{height:.1f}"><title>{escape(run["dag_id"])} {escape(run["run_id"])}: '
            f"{escape(human_size(run['bytes']))} ({escape(run['state'])})</title></rect>"
        )
    bottom = 18 + 3 * _PANEL + 2 * _GAP
    for hours in range(0, 25, 6):
        tx = _LEFT + plot * hours / 24
        label = "now" if hours == 24 else f"-{24 - hours} h"
        parts.append(f'<text x="{tx:.1f}" y="{bottom + 16}" text-anchor="middle">{label}</text>')
    height = bottom + 24
    return Markup(
        f'<svg id="lag-chart" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="Replication lag over the last 24 hours">{"".join(parts)}</svg>'
    )


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"
