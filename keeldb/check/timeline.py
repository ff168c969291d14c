"""Render a checked history as a self-contained HTML page with an SVG timeline.

Like Porcupine's visualisation: one lane per process, each operation a bar from its invocation
to its completion (open operations run to the end, striped), the x axis is the history's
real-time order (event positions). On a failure the page shows the part (key) that failed:
the longest linearization found is numbered in green with the state after each step, the
operation whose completion came before it could be placed is red, the other operations that
could not be placed next are orange. Hovering a bar shows its details.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from keeldb.check.models import Model, Operation
from keeldb.check.result import Result

LANE_PX = 26
BAR_PX = 16
LABEL_PX = 90
TOP_PX = 30
WIDTH_TARGET_PX = 2400
POS_PX_MIN = 4.0
POS_PX_MAX = 28.0

_COLORS = {
    "linearized": "#4caf50",
    "blocking": "#e53935",
    "refused": "#fb8c00",
    "other": "#90a4ae",
    "failed": "#e0e0e0",
}


def render_html(ops: Sequence[Operation], result: Result, model: Model,
                title: str = "history") -> str:
    """Return an HTML page showing `ops` (the paired history) and `result`'s verdict."""
    details = result.details
    failed = not result.valid and not result.unknown
    shown = list(ops)
    scope = "all operations"
    if failed and model.per_key:
        key = details.get("failed_key")
        shown = [op for op in ops if op.input.key == key]
        scope = f"key {key!r} (the part that failed)"
    roles = _roles(details) if failed else {}
    svg = _svg(shown, roles, details, model)
    verdict = escape(result.verdict.upper())
    color = "#2e7d32" if result.valid else ("#c62828" if failed else "#ef6c00")
    legend = "".join(
        f'<span style="display:inline-block;width:12px;height:12px;background:{c};'
        f'margin:0 4px 0 12px"></span>{escape(name)}'
        for name, c in (("linearized (order, state after)", _COLORS["linearized"]),
                        ("completed before it could be placed", _COLORS["blocking"]),
                        ("could not be placed next", _COLORS["refused"]),
                        ("other", _COLORS["other"]),
                        ("failed (did not happen)", _COLORS["failed"])))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}: {verdict}</title>"
        "<style>body{font-family:sans-serif;margin:16px}"
        "pre{background:#f5f5f5;padding:8px;overflow:auto;max-height:22em}"
        ".wrap{overflow-x:auto;border:1px solid #ddd}</style></head><body>"
        f"<h2>{escape(title)}: <span style=\"color:{color}\">{verdict}</span></h2>"
        f"<p>model <b>{escape(model.name)}</b>, showing {escape(scope)}: {len(shown)} "
        f"operations, {len({_lane_key(op.process) for op in shown})} processes. "
        f"Hover a bar for details.</p><p>{legend}</p>"
        f"<div class=\"wrap\">{svg}</div>"
        f"<h3>Explanation</h3><pre>{escape(result.explanation)}</pre>"
        "</body></html>\n")


def _roles(details: dict[str, Any]) -> dict[int, tuple[str, str]]:
    """Map an op's invocation index to (role, label) for highlighting."""
    roles: dict[int, tuple[str, str]] = {}
    states = details.get("linearized_states", [])
    for k, idx in enumerate(details.get("linearized", [])):
        st = states[k] if k < len(states) else ""
        roles[idx] = ("linearized", f"#{k + 1} -> {st}")
    for idx in details.get("refused", []):
        roles[idx] = ("refused", "not placeable")
    if details.get("blocking") is not None:
        roles[details["blocking"]] = ("blocking", "cannot be linearized")
    return roles


def _lane_key(process: Any) -> str:
    return repr(process)


def _svg(ops: list[Operation], roles: dict[int, tuple[str, str]],
         details: dict[str, Any], model: Model) -> str:
    lanes: dict[str, int] = {}
    for op in ops:
        lanes.setdefault(_lane_key(op.process), len(lanes))
    lo = min((op.call for op in ops), default=0)
    hi = max((max(op.call, op.ret or 0) for op in ops), default=0) + 2
    px = min(POS_PX_MAX, max(POS_PX_MIN, WIDTH_TARGET_PX / max(1, hi - lo)))
    width = int(LABEL_PX + (hi - lo) * px + 20)
    height = TOP_PX + len(lanes) * LANE_PX + 10
    end_idx = details.get("prefix_end_index")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="10">',
             '<defs><pattern id="open" width="6" height="6" patternUnits="userSpaceOnUse" '
             'patternTransform="rotate(45)"><rect width="3" height="6" fill="#cfd8dc"/>'
             '</pattern></defs>']
    for name, lane in lanes.items():
        y = TOP_PX + lane * LANE_PX
        parts.append(f'<line x1="{LABEL_PX}" y1="{y + LANE_PX / 2}" x2="{width}" '
                     f'y2="{y + LANE_PX / 2}" stroke="#eee"/>')
        parts.append(f'<text x="4" y="{y + LANE_PX / 2 + 4}">process {escape(name)}</text>')
    for op in ops:
        parts.append(_bar(op, lanes, roles, lo, hi, px, model, end_idx))
    parts.append("</svg>")
    return "".join(parts)


def _bar(op: Operation, lanes: dict[str, int], roles: dict[int, tuple[str, str]],
         lo: int, hi: int, px: float, model: Model, end_idx: int | None) -> str:
    y = TOP_PX + lanes[_lane_key(op.process)] * LANE_PX + (LANE_PX - BAR_PX) / 2
    x0 = LABEL_PX + (op.call - lo) * px
    ret = op.ret if op.ret is not None else hi - 1
    w = max(px * 0.6, (ret - op.call) * px)
    role, label = roles.get(op.call_index, ("other", ""))
    if op.output.status == "fail":
        role = "failed"
    fill = _COLORS[role]
    if op.ret is None and role == "other":
        fill = "url(#open)"
    stroke = "#b71c1c" if role == "blocking" else "#546e7a"
    dash = ' stroke-dasharray="4 2"' if op.ret is None else ""
    end = "open (never completed or :info)" if op.ret is None else f"index {op.ret_index}"
    tip = (f"p{op.process}: {model.describe_op(op)}\ninvoked at index {op.call_index}, "
           f"completed: {end}" + (f"\n{label}" if label else ""))
    text = label if role == "linearized" else model.describe_op(op)
    out = (f'<g><title>{escape(tip)}</title><rect x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" '
           f'height="{BAR_PX}" rx="3" fill="{fill}" stroke="{stroke}"{dash}/>'
           f'<text x="{x0 + 2:.1f}" y="{y + BAR_PX - 4:.1f}" fill="#102027">'
           f'{escape(_clip(text, w))}</text></g>')
    if role == "blocking" and end_idx is not None:
        xe = x0 + w
        out += (f'<line x1="{xe:.1f}" y1="{TOP_PX - 8}" x2="{xe:.1f}" y2="{y + BAR_PX:.1f}" '
                f'stroke="#e53935" stroke-dasharray="3 3"/><text x="{xe + 3:.1f}" '
                f'y="{TOP_PX - 12}" fill="#c62828">prefix ends (index {end_idx})</text>')
    return out


def _clip(text: str, width_px: float) -> str:
    room = max(0, int(width_px / 6) - 1)
    return text if len(text) <= room else (text[: max(0, room - 1)] + "…" if room > 1 else "")
