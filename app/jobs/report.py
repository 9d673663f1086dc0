"""A job's report: the data (``?format=json``) and a self-contained HTML page drawn from it.

The page has no script and loads nothing: charts are SVG drawn here, styles are inline, and the response's
Content-Security-Policy forbids any fetch. Every string that came from a user (model name, reasons) is
escaped. The Pareto front is over (the chart's cost, loss in the budget's metric): a candidate is on it when
no other one is at least as good on both and better on one.
"""

from __future__ import annotations

import html
import math
from datetime import datetime
from typing import Any

from app.models import Job, Model

SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                    "X-Content-Type-Options": "nosniff"}
STATUS_COLORS = {"succeeded": "#2e7d32", "failed": "#c62828", "running": "#1565c0", "cancelled": "#8d6e63",
                 "skipped": "#bdbdbd", "pending": "#e0e0e0"}


def data(job: Job, model: Model | None) -> dict[str, Any]:
    """Everything the page shows, as JSON."""
    metrics = job.metrics or {}
    original, result = metrics.get("original"), metrics.get("result")
    metric = metrics.get("metric") or job.evaluation.get("metric")
    candidates = [dict(c) for c in metrics.get("candidates", [])]
    measured = [c for c in candidates if c["status"] == "measured"]
    batches = sorted(original["latency_ms"], key=int) if original else []
    fronts = {"size": _pareto(measured, lambda c: c["size_bytes"]),
              "latency": _pareto(measured, lambda c: c["latency_p50_ms"].get(batches[0]) if batches else None)}
    for c in measured:
        c["pareto"] = {axis: c["candidate"] in front for axis, front in fronts.items()}
    if job.goal:
        goal = metrics.get("goal") or {k: job.goal[k] for k in ("objective", "max_accuracy_drop", "time_budget_s")}
        chosen = goal.get("best")
    else:  # steps and presets keep their last measured candidate
        goal, chosen = None, measured[-1]["candidate"] if measured and result else None
    return {
        "job": {"id": job.id, "state": job.state, "created_at": _iso(job.created_at),
                "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
                "cache_hit": job.cache_hit, "regressed": job.regressed, "regressions": job.regressions,
                "error": job.error},
        "model": {"id": job.model_id, "name": model.name if model else None,
                  "format": model.format if model else None},
        "recipe": "goal" if job.goal else "steps", "goal": goal, "chosen": chosen,
        "evaluation": {"metric": metric, "max_accuracy_drop": job.evaluation.get("max_accuracy_drop"),
                       "original_value": metrics.get("metric_original")},
        "target": job.target, "batch_sizes": batches,
        "comparison": {"original": original, "result": result},
        "candidates": candidates,
        "timeline": [{"index": s["index"], "pass": s["pass"], "candidate": s.get("candidate"), "status": s["status"],
                      "started_at": s.get("started_at"), "finished_at": s.get("finished_at"),
                      "seconds": _seconds(s.get("started_at"), s.get("finished_at"))} for s in job.steps],
    }


def _pareto(points: list[dict[str, Any]], cost) -> set[int]:
    usable = [(cost(p), p["loss"], p["candidate"]) for p in points if cost(p) is not None and p.get("loss") is not None]
    return {n for c, loss, n in usable
            if not any(c2 <= c and l2 <= loss and (c2 < c or l2 < loss) for c2, l2, _ in usable)}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


# --- the page ----------------------------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values from at or below ``low`` to at or above ``high``."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def _scatter(title: str, points: list[dict[str, Any]], x_label: str, y_label: str, x_format, cls: str) -> str:
    """An SVG scatter: each point ``{x, y, label, kind}`` (original, candidate, best, rejected); the Pareto
    points (``front``) joined by a line."""
    width, height, left, right, top, bottom = 460, 300, 64, 16, 28, 44
    usable = [p for p in points if p["x"] is not None and p["y"] is not None]
    parts = [f'<svg class="chart {cls}" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{_e(title)}</text>']
    if not usable:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no measurements yet</text></svg>')
        return "".join(parts)
    xs, ys = [p["x"] for p in usable], [p["y"] for p in usable]
    pad_x, pad_y = (max(xs) - min(xs)) * 0.08 or abs(xs[0]) * 0.1 or 1, (max(ys) - min(ys)) * 0.1 or 0.01
    x_ticks, y_ticks = _ticks(max(0.0, min(xs) - pad_x), max(xs) + pad_x), _ticks(min(ys) - pad_y, max(ys) + pad_y)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / ((y1 - y0) or 1) * (height - top - bottom)

    parts.append(f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>'
                 f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>')
    for x in x_ticks:
        parts.append(f'<text class="tick" x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">'
                     f'{_e(x_format(x))}</text>')
    for y in y_ticks:
        parts.append(f'<line class="grid" x1="{left}" y1="{sy(y):.1f}" x2="{width - right}" y2="{sy(y):.1f}"/>'
                     f'<text class="tick" x="{left - 4}" y="{sy(y) + 3:.1f}" text-anchor="end">{y:.4g}</text>')
    parts.append(f'<text class="label" x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{_e(x_label)}</text><text class="label" transform="translate(12 {(top + height - bottom) / 2}) '
                 f'rotate(-90)" text-anchor="middle">{_e(y_label)}</text>')
    front = sorted((p for p in usable if p.get("front")), key=lambda p: p["x"])
    if len(front) > 1:
        path = " ".join(f"{sx(p['x']):.1f},{sy(p['y']):.1f}" for p in front)
        parts.append(f'<polyline class="pareto" points="{path}"/>')
    for p in usable:
        shape = ('<rect class="mark {kind}" x="{x:.1f}" y="{y:.1f}" width="10" height="10"' if p["kind"] == "original"
                 else '<circle class="mark {kind}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r}"')
        parts.append(shape.format(kind=p["kind"], x=sx(p["x"]) - 5, y=sy(p["y"]) - 5, cx=sx(p["x"]), cy=sy(p["y"]),
                                  r=7 if p["kind"] == "best" else 5)
                     + f'><title>{_e(p["label"])}</title></' + ("rect>" if p["kind"] == "original" else "circle>"))
    parts.append("</svg>")
    return "".join(parts)


def _timeline(steps: list[dict[str, Any]]) -> str:
    """An SVG Gantt chart of the steps that ran, on the job's clock."""
    ran = [s for s in steps if s["started_at"]]
    if not ran:
        return '<p class="muted">No step has run.</p>'
    start = min(datetime.fromisoformat(s["started_at"]) for s in ran)
    ends = [datetime.fromisoformat(s["finished_at"]) for s in ran if s["finished_at"]]
    total = max(((max(ends) - start).total_seconds() if ends else 0.0), 1e-3)
    width, left, row = 760, 230, 22
    height = row * len(ran) + 30
    parts = [f'<svg class="chart timeline" viewBox="0 0 {width} {height}" role="img" aria-label="step timeline">']
    for i, s in enumerate(ran):
        begin = (datetime.fromisoformat(s["started_at"]) - start).total_seconds()
        length = s["seconds"] if s["seconds"] is not None else total - begin
        x = left + begin / total * (width - left - 10)
        bar = max(length / total * (width - left - 10), 2)
        name = (f"#{s['candidate']} " if s["candidate"] else "") + f"{s['index']}. {s['pass']}"
        parts.append(f'<text class="tick" x="{left - 6}" y="{i * row + 15}" text-anchor="end">{_e(name)}</text>'
                     f'<rect class="bar {s["status"]}" x="{x:.1f}" y="{i * row + 4}" width="{bar:.1f}" height="14" '
                     f'fill="{STATUS_COLORS.get(s["status"], "#999")}"><title>{_e(name)}: {_e(s["status"])}, '
                     f'{_num(length, 3)} s</title></rect>')
    parts.append(f'<text class="tick" x="{width - 10}" y="{height - 6}" text-anchor="end">{total:.2f} s</text></svg>')
    return "".join(parts)


def _comparison(report: dict[str, Any]) -> str:
    original, result = report["comparison"]["original"], report["comparison"]["result"] or {}
    if not original:
        return '<p class="muted">The original model has not been measured yet.</p>'
    rows: list[tuple[str, Any, Any, str]] = [
        ("size", original["size_bytes"], result.get("size_bytes"), "bytes"),
        ("parameters", original.get("parameters"), result.get("parameters"), "n"),
        ("non-zero parameters", original.get("nonzero_parameters"), result.get("nonzero_parameters"), "n")]
    for batch in report["batch_sizes"]:
        for q in ("p50", "p95", "p99"):
            rows.append((f"latency {q} at batch {batch} (ms)", original["latency_ms"][batch][q],
                         result.get("latency_ms", {}).get(batch, {}).get(q), "n"))
        rows.append((f"throughput at batch {batch} (samples/s)", original["throughput"][batch],
                     result.get("throughput", {}).get(batch), "n"))
    rows.append(("peak memory", original.get("peak_memory_bytes"), result.get("peak_memory_bytes"), "bytes"))
    rows += [(name, original[name], result.get(name), "n")
             for name in ("accuracy", "f1_macro", "top5_accuracy", "mse", "mae") if name in original]
    rows += [(f"fidelity: {name}", None, value, "n") for name, value in result.get("fidelity", {}).items()
             if name != "inputs"]
    rows.append(("runtime", original["conditions"]["runtime"], result.get("conditions", {}).get("runtime"), "s"))
    body = []
    for name, before, after, kind in rows:
        fmt = _bytes if kind == "bytes" else (_e if kind == "s" else _num)
        numbers = kind != "s" and isinstance(before, int | float) and before and isinstance(after, int | float)
        body.append(f"<tr><th>{_e(name)}</th><td class=n>{'–' if before is None else fmt(before)}</td>"
                    f"<td class=n>{'–' if after is None else fmt(after)}</td>"
                    f"<td class=n>{f'{after / before:.2f}×' if numbers else ''}</td></tr>")
    return ('<table class="comparison"><thead><tr><th></th><th class=n>original</th><th class=n>result</th>'
            '<th class=n>result / original</th></tr></thead><tbody>' + "".join(body) + "</tbody></table>")


def _candidates_table(report: dict[str, Any]) -> str:
    batch = report["batch_sizes"][0] if report["batch_sizes"] else None
    rows = []
    for c in report["candidates"]:
        fronts = [axis for axis, on in (c.get("pareto") or {}).items() if on]
        marks = ("chosen " if c["candidate"] == report["chosen"] else "") + (
            f"Pareto ({', '.join(fronts)})" if fronts else "")
        rows.append(f'<tr class="{_e(c["status"])}"><td>{c["candidate"]}</td><td>{_e(c.get("group", ""))}</td>'
                    f'<td>{_e(" → ".join(c["steps"]))}</td><td>{_e(c["status"])}</td>'
                    f'<td class=n>{_bytes(c.get("size_bytes"))}</td>'
                    f'<td class=n>{_num((c.get("latency_p50_ms") or {}).get(batch))}</td>'
                    f'<td class=n>{_num(c.get("value"))}</td><td class=n>{_num(c.get("loss"))}</td>'
                    f'<td class=n>{_num(c.get("score"))}</td><td>{marks}</td>'
                    f'<td>{_e("; ".join(c.get("regressions") or []) or c.get("reason", ""))}</td></tr>')
    metric = report["evaluation"]["metric"] or "metric"
    return (f'<table class="candidates"><thead><tr><th>#</th><th>group</th><th>steps</th><th>status</th>'
            f'<th class=n>size</th><th class=n>p50 ms (batch {batch})</th><th class=n>{_e(metric)}</th>'
            f'<th class=n>loss</th><th class=n>score</th><th></th><th>notes</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _points(report: dict[str, Any], axis: str) -> list[dict[str, Any]]:
    original, metric = report["comparison"]["original"], report["evaluation"]["metric"]
    batch = report["batch_sizes"][0] if report["batch_sizes"] else None
    if not original:
        return []

    def x_of(entry: dict[str, Any], latency: dict[str, Any]) -> float | None:
        return entry["size_bytes"] / 1e6 if axis == "size" else latency.get(batch)

    points = [{"x": x_of(original, {b: s["p50"] for b, s in original["latency_ms"].items()}),
               "y": report["evaluation"]["original_value"], "kind": "original", "label": "original"}]
    for c in report["candidates"]:
        if c["status"] != "measured":
            continue
        kind = ("best" if c["candidate"] == report["chosen"]
                else "candidate" if c.get("meets_goal", not c.get("regressions")) else "rejected")
        points.append({"x": x_of(c, c["latency_p50_ms"]), "y": c.get("value"), "kind": kind,
                       "front": (c.get("pareto") or {}).get(axis),
                       "label": f"#{c['candidate']} {' → '.join(c['steps'])}: {metric} {_num(c.get('value'))}"})
    return points


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.muted{color:#777}.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px}
.verdict{padding:8px 12px;border-radius:6px;margin:12px 0}.ok{background:#e8f5e9}.bad{background:#ffebee}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}.n{text-align:right;white-space:nowrap}tr.skipped{color:#999}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fafafa;border:1px solid #eee;border-radius:6px}
.charts .chart{width:480px}.timeline{width:100%}.axis{stroke:#555}.grid{stroke:#e5e5e5}.tick{font-size:10px;fill:#555}
.label{font-size:11px;fill:#333}.title{font-size:12px;font-weight:600}.pareto{fill:none;stroke:#ff8f00;
stroke-width:1.5;stroke-dasharray:4 3}.mark.original{fill:#455a64}.mark.candidate{fill:#1e88e5}
.mark.best{fill:#2e7d32;stroke:#1b5e20;stroke-width:2}.mark.rejected{fill:#e57373}
"""


def render(report: dict[str, Any]) -> str:
    job, goal, metric = report["job"], report["goal"], report["evaluation"]["metric"] or "metric"
    model = report["model"]
    if job["regressed"]:
        verdict = ('<div class="verdict bad"><b>Regressed.</b><ul>' +
                   "".join(f"<li>{_e(r)}</li>" for r in job["regressions"]) + "</ul></div>")
    elif job["state"] == "succeeded":
        verdict = '<div class="verdict ok"><b>Passed the regression gate.</b></div>'
    else:
        detail = (job["error"] or {}).get("detail", "")
        verdict = f'<div class="verdict bad"><b>{_e(job["state"])}</b> {_e(detail)}</div>'
    recipe = (f"goal: the best {_e(goal['objective'])} within a drop of {_num(goal['max_accuracy_drop'])} in "
              f"{_e(metric)}, {_num(goal['time_budget_s'])} s budget" if goal else
              _e(" → ".join(s["pass"] for s in report["timeline"])))
    batch = report["batch_sizes"][0] if report["batch_sizes"] else "?"
    charts = (_scatter(f"Size against {metric}", _points(report, "size"), "size (MB)", metric,
                       lambda x: f"{x:.3g}", "size")
              + _scatter(f"Latency against {metric}", _points(report, "latency"), f"p50 latency at batch {batch} (ms)",
                         metric, lambda x: f"{x:.3g}", "latency"))
    candidates = (f"<h2>Candidates{' and the Pareto front' if goal else ''}</h2>{_candidates_table(report)}"
                  if len(report["candidates"]) > 1 or goal else "")
    state_color = STATUS_COLORS.get(job["state"], "#999")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>TensorPress report · {_e(model['name'] or job['id'])}</title><style>{STYLE}</style></head>
<body>
<h1>{_e(model['name'] or model['id'])}
<span class="badge" style="background:{state_color}">{_e(job['state'])}</span></h1>
<p class="muted">Job {_e(job['id'])} · {_e(model['format'] or '')} · {recipe} · created {_e(job['created_at'])}
{f"· finished {_e(job['finished_at'])}" if job['finished_at'] else ''}{' · cache hit' if job['cache_hit'] else ''}</p>
{verdict}
<h2>Original and result</h2>{_comparison(report)}
<h2>Size and latency against {_e(metric)}</h2>
<div class="charts">{charts}</div>
<p class="muted">Square: the original; green: the chosen result; blue: other candidates within the budget;
red: candidates that failed it; dashed orange: the Pareto front (no candidate smaller or faster with a smaller
loss).</p>
{candidates}
<h2>Timeline</h2>{_timeline(report['timeline'])}
<p class="muted">Steps on the job's clock; the gaps are measurements (of the original and of each candidate).</p>
<h2>How it was measured</h2>
<p class="muted">{_e(_conditions(report))}</p>
</body></html>
"""


def _conditions(report: dict[str, Any]) -> str:
    original = report["comparison"]["original"]
    if not original:
        return "Not measured yet."
    c = original["conditions"]
    return (f"{c.get('runtime')} {c.get('version', '')} on {c.get('device')} ({c.get('cpu') or ''}), "
            f"{c.get('threads')} threads; {c.get('warmup')} warm-up runs, then at least {c.get('min_iterations')} "
            "runs and "
            f"{c.get('min_time_s')} s per batch size; percentiles by {c.get('percentiles')}; peak memory: "
            f"{c.get('peak_memory')}. Metric {report['evaluation']['metric']} on "
            f"{(report['comparison']['result'] or {}).get('fidelity', {}).get('inputs', 'the evaluation inputs')}.")
