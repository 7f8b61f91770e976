"""The report page: HTML from what collect.py read. CSS and JS live in template.html, inline in the page."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from importlib import resources
from typing import Any

from latentmill import __version__, schema
from latentmill.report import svg
from latentmill.report.collect import Output

STAGE_ORDER = (schema.STAGE_VALIDATE, *schema.STAGES)
# Per-row values, never a category to filter by.
NOT_CATEGORIES = {schema.ID, schema.PROMPT, schema.SEED, schema.OUTPUT_URI, schema.BYTES, schema.SHA256,
                  schema.LATENTS_URI, schema.LATENTS_SHA256, schema.INPUT_ROW,
                  *(schema.seconds_column(stage) for stage in schema.STAGES)}
MAX_CATEGORY_VALUES = 30
# Columns whose difference between two outputs of one row says nothing (they differ whenever anything does).
NOT_COMPARED = {schema.ID, schema.OUTPUT_URI, schema.BYTES, schema.SHA256, schema.LATENTS_URI, schema.LATENTS_SHA256,
                "model_hash", "job_fingerprint", "latentmill_version",
                *(schema.seconds_column(stage) for stage in schema.STAGES)}
KNOWN_COLUMNS = {*schema.MANIFEST_COLUMNS, schema.LATENTS_URI, schema.LATENTS_SHA256}
EXAMPLES_PER_ERROR_GROUP = 3


@dataclass
class Item:
    """One output in a gallery or in the side-by-side view."""

    row: dict[str, Any]
    thumb: str | None = None  # relative URL of its thumbnail
    thumb_error: str | None = None
    link: str | None = None  # relative URL of the media object; None where none reaches it
    media_uri: str | None = None
    video: bool = False


@dataclass
class OutputView:
    output: Output
    items: list[Item] = field(default_factory=list)
    sampled: bool = False
    panel_id: str = "out1"


@dataclass
class CompareView:
    ids: list[str]
    total_ids: int
    sampled: bool
    # id -> one entry per output: ("ok", Item) | ("failed", error row) | ("missing", None)
    cells: dict[str, list[tuple[str, Any]]]


# ------------------------------------------------------------------------------------------ helpers


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def seconds(value: Any) -> str:
    return "–" if value is None else f"{float(value):.1f} s"


def utc(timestamp: float | None) -> str:
    if timestamp is None:
        return "–"
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def attr_name(column: str) -> str:
    return "data-f-" + re.sub(r"[^a-z0-9_-]", "_", column.lower())


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------------ numbers


def category_columns(manifest) -> tuple[dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Columns with 2..30 distinct values over the whole manifest (value, count), and the columns every
    row has the same value of."""
    import pyarrow as pa

    categories: dict[str, list[tuple[str, int]]] = {}
    constant: dict[str, str] = {}
    if manifest is None:
        return categories, constant
    for name in manifest.column_names:
        column = manifest[name]
        if name in NOT_CATEGORIES or pa.types.is_nested(column.type):
            continue
        counts = column.value_counts().to_pylist()
        if len(counts) == 1:
            constant[name] = fmt(counts[0]["values"])
        elif 2 <= len(counts) <= MAX_CATEGORY_VALUES:
            pairs = [(fmt(entry["values"]), entry["counts"]) for entry in counts]
            categories[name] = sorted(pairs, key=lambda pair: _sort_key(pair[0]))
    return categories, constant


def _sort_key(text: str) -> tuple[int, float, str]:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def stage_seconds(manifest) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    if manifest is None:
        return found
    for stage in schema.STAGES:
        name = schema.seconds_column(stage)
        if name in manifest.column_names:
            found[stage] = [float(v) for v in manifest[name].drop_null().to_pylist()]
    return found


# ------------------------------------------------------------------------------------------ sections


def _tiles(pairs: list[tuple[str, Any]]) -> str:
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><div class="v">{e(value)}</div><div class="k">{e(label)}</div></div>'
        for label, value in pairs) + "</div>"


def _counts(view: OutputView, constant: dict[str, str]) -> str:
    output = view.output
    summary = output.summary
    html = [f'<h2 id="{view.panel_id}-counts">Counts</h2>']
    current = [("outputs in the manifest", f"{output.manifest_rows:,}"),
               ("error rows in errors/", f"{output.error_rows:,}"),
               ("runs recorded", len(output.runs))]
    if output.manifest is not None and schema.BYTES in output.manifest.column_names:
        total = sum(v for v in output.manifest[schema.BYTES].to_pylist() if v)
        current.append(("media bytes", _bytes(total)))
    html.append(_tiles(current))
    if summary:
        last = [("rows read", _count(summary.get("rows_read")))]
        if summary.get("requests") not in (None, summary.get("rows_read")):
            last.append(("samples requested", _count(summary["requests"])))
        last += [("outputs written", _count(summary.get("outputs_written"))),
                 ("already done", _count(summary.get("already_done"))),
                 ("rows failed", _count(summary.get("rows_failed"))),
                 ("wall time", seconds(summary.get("wall_seconds"))),
                 ("first output after", seconds(summary.get("seconds_to_first_output")))]
        wall = summary.get("wall_seconds") or 0
        if wall > 0:
            last.append(("outputs / s", f"{(summary.get('outputs_written') or 0) / wall:.2f}"))
        html.append(f'<h3>Latest run <code>{e(summary.get("run_id", ""))}</code> (summary.json)</h3>')
        html.append(_tiles(last))
        if summary.get("failed_by_stage"):
            html.append('<p>failed by stage: ' + ", ".join(
                f"{e(stage)} {count}" for stage, count in _stage_sorted(summary["failed_by_stage"])) + "</p>")
        if summary.get("budget_exceeded"):
            html.append('<p class="bad">error budget (max_failed) exceeded</p>')
    else:
        html.append('<p class="muted">No run has finished into this output yet (no summary.json): the counts '
                    'above are what the manifest and errors/ hold now.</p>')
    if constant:
        html.append('<p class="constant">Every output has ' + "".join(
            f'<span class="kv" title="{e(value)}"><b>{e(name)}</b> {e(truncate(value, 24))}</span>'
            for name, value in constant.items()) + "</p>")
    if output.job_record:
        html.append(f'<p class="muted">job fingerprint <code>{e(output.job_record.get("fingerprint", ""))}</code>'
                    f', input <code>{e(output.job_record.get("input", ""))}</code></p>')
    return "".join(html)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("–" if value is None else str(value))


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _stage_sorted(by_stage: dict[str, int]) -> list[tuple[str, int]]:
    rank = {stage: index for index, stage in enumerate(STAGE_ORDER)}
    return sorted(by_stage.items(), key=lambda pair: (rank.get(pair[0], len(rank)), pair[0]))


def _runs(output: Output, anchor: str) -> str:
    html = [f'<h2 id="{anchor}">Runs into this output</h2>']
    if not output.runs:
        html.append('<p class="muted">No runs/*.json: no run has finished into this output.</p>')
        return "".join(html)
    html.append('<table class="runs"><thead><tr><th>run</th><th>finished</th><th>rows read</th><th>written</th>'
                '<th>already done</th><th>failed</th><th>wall</th><th>first output</th><th>outputs/s</th>'
                '<th>model</th><th></th></tr></thead><tbody>')
    for run in reversed(output.runs):
        failed = _count(run.get("rows_failed"))
        by_stage = run.get("failed_by_stage") or {}
        if by_stage:
            failed = f"{failed} (" + ", ".join(f"{stage} {count}" for stage, count in _stage_sorted(by_stage)) + ")"
        wall = run.get("wall_seconds") or 0
        rate = f"{(run.get('outputs_written') or 0) / wall:.2f}" if wall > 0 else "–"
        flags = [name for name, on in (("resumed", run.get("resumed")), ("over budget", run.get("budget_exceeded")))
                 if on]
        html.append(
            f'<tr><td><code>{e(run.get("run_id", ""))}</code></td><td>{e(utc(run.get("_mtime")))}</td>'
            f'<td>{e(_count(run.get("rows_read")))}</td><td>{e(_count(run.get("outputs_written")))}</td>'
            f'<td>{e(_count(run.get("already_done")))}</td><td>{e(failed)}</td>'
            f'<td>{e(seconds(run.get("wall_seconds")))}</td>'
            f'<td>{e(seconds(run.get("seconds_to_first_output")))}</td><td>{e(rate)}</td>'
            f'<td>{e(run.get("model", ""))}</td><td>{e(", ".join(flags))}</td></tr>')
    html.append("</tbody></table>")
    latest = output.runs[-1]
    if latest.get("config"):
        html.append('<details><summary>job configuration of the latest run (secrets masked)</summary><pre>'
                    + e(json.dumps(latest["config"], indent=2, sort_keys=True, default=str)) + "</pre></details>")
    return "".join(html)


def _over_time(output: Output) -> str:
    """Cumulative outputs of each run against seconds since its start, from the manifest parts' write
    times (a part is written after its media, at least every manifest_flush_seconds)."""
    html = ['<div class="figure narrow"><h3>Outputs over time</h3>']
    runs = {run.get("run_id"): run for run in output.runs}
    by_run: dict[str, list] = {}
    for part in output.parts:
        if part.mtime is not None and part.rows:
            by_run.setdefault(part.run_id, []).append(part)
    series = []
    for run_id in sorted(by_run):
        parts = sorted(by_run[run_id], key=lambda part: part.mtime)
        run = runs.get(run_id)
        wall = (run or {}).get("wall_seconds")
        if run and run.get("_mtime") is not None and wall is not None:
            start, end = run["_mtime"] - wall, wall
        else:
            start, end = parts[0].mtime, None
        points, total = [(0.0, 0.0)], 0
        for part in parts:
            offset = part.mtime - start
            if end is not None and offset > end + 5:  # a part rewritten by a later resume
                continue
            total += part.rows
            points.append((max(offset, 0.0), float(total)))
        if end is not None and end >= points[-1][0]:
            points.append((end, float(total)))
        label = f"{run_id}: {total:,} outputs" + ("" if end is not None else " (start unknown: from its first part)")
        series.append((label, points))
    if not series:
        html.append('<p class="muted">Not derivable: no manifest part with a write time.</p></div>')
        return "".join(html)
    html.append(svg.line_chart(series[-len(svg.PALETTE):], "seconds since the run started", "outputs"))
    html.append('<p class="muted small">From the write times of the manifest parts (each written after its '
                'media, at least every manifest_flush_seconds); a run started wall time before it ended.</p></div>')
    return "".join(html)


def _timings(output: Output, anchor: str) -> str:
    html = [f'<h2 id="{anchor}">Time</h2><div class="plots">', _over_time(output)]
    values = stage_seconds(output.manifest)
    if not values:
        html.append('<p class="muted">The manifest has no *_seconds columns.</p></div>')
        return "".join(html)
    html.append('<div class="figure"><h3>Seconds per row in each stage</h3><div class="plots">'
                + "".join(svg.histogram(values[stage], f"{stage}_seconds") for stage in values) + "</div>")
    html.append('<table class="stats"><thead><tr><th>stage</th><th>rows</th><th>mean</th><th>p50</th><th>p90</th>'
                '<th>p99</th><th>max</th><th>total</th></tr></thead><tbody>')
    for stage, data in values.items():
        data = sorted(data)
        if not data:
            continue
        cells = [sum(data) / len(data), svg.percentile(data, 0.5), svg.percentile(data, 0.9),
                 svg.percentile(data, 0.99), data[-1], sum(data)]
        html.append(f"<tr><td>{e(stage)}</td><td>{len(data):,}</td>"
                    + "".join(f"<td>{svg.number(v)} s</td>" for v in cells) + "</tr>")
    html.append("</tbody></table><p class=\"muted small\">Each row's share of its batch's time in the stage.</p>"
                "</div></div>")
    return "".join(html)


def _errors(output: Output, anchor: str) -> str:
    html = [f'<h2 id="{anchor}">Errors</h2>']
    errors = output.errors
    if errors is None or not errors.num_rows:
        html.append('<p class="ok">No error rows in errors/.</p>')
        return "".join(html)
    rows = errors.to_pylist()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row.get(schema.ERROR_STAGE)), str(row.get(schema.ERROR_TYPE))), []).append(row)
    rank = {stage: index for index, stage in enumerate(STAGE_ORDER)}
    ordered = sorted(groups.items(), key=lambda item: (rank.get(item[0][0], len(rank)), -len(item[1]), item[0][1]))
    html.append(f'<p>{len(rows):,} error row(s) in {len(groups)} group(s). errors/ holds the rows that failed in '
                'the latest run (earlier runs\' error parts are removed once a run has retried their rows).</p>')
    html.append('<table class="errors"><thead><tr><th>stage</th><th>type</th><th>rows</th><th>examples</th></tr>'
                '</thead><tbody>')
    for (stage, kind), members in ordered:
        members = sorted(members, key=lambda row: (str(row.get(schema.ID)), row.get(schema.SAMPLE_INDEX) or 0))
        examples = []
        for row in members[:EXAMPLES_PER_ERROR_GROUP]:
            input_row = row.get(schema.INPUT_ROW) or ""
            examples.append(
                f'<div class="example"><code>{e(row.get(schema.ID))}</code> '
                f'{e(truncate(str(row.get(schema.ERROR_MESSAGE) or ""), 600))}'
                + (f'<details><summary>input row</summary><pre>{e(truncate(str(input_row), 4000))}</pre></details>'
                   if input_row else "") + "</div>")
        html.append(f'<tr class="error-group"><td>{e(stage)}</td><td><code>{e(kind)}</code></td>'
                    f'<td>{len(members):,}</td><td>{"".join(examples)}</td></tr>')
    html.append("</tbody></table>")
    return "".join(html)


# ------------------------------------------------------------------------------------------ gallery


def _media(item: Item, label: str) -> str:
    if item.thumb is None:
        reason = item.thumb_error or "no media"
        inner = f'<div class="nothumb">{e(reason)}</div>'
        if item.link:
            return f'<a class="media" href="{e(item.link)}">{inner}</a>'
        return f'<div class="media">{inner}</div>'
    if item.video and item.link:
        return (f'<div class="media"><video controls preload="none" playsinline poster="{e(item.thumb)}" '
                f'src="{e(item.link)}" title="{e(label)}"></video><span class="badge">video</span></div>')
    image = f'<img loading="lazy" src="{e(item.thumb)}" alt="{e(label)}">'
    badge = '<span class="badge">video</span>' if item.video else ""
    if item.link:
        return f'<a class="media" href="{e(item.link)}" target="_blank">{image}{badge}</a>'
    return f'<div class="media">{image}{badge}</div>'


def _parameters(row: dict[str, Any], extras: list[str]) -> list[tuple[str, str]]:
    pairs = [("seed", row.get(schema.SEED)), ("steps", row.get(schema.STEPS)),
             ("guidance", row.get(schema.GUIDANCE))]
    if row.get(schema.HEIGHT) is not None:
        pairs.append(("size", f"{row.get(schema.WIDTH)}×{row.get(schema.HEIGHT)}"))
    if row.get(schema.NUM_FRAMES) is not None:
        pairs += [("frames", row.get(schema.NUM_FRAMES)), ("fps", row.get(schema.FPS))]
    pairs += [(name, row.get(name)) for name in extras]
    if row.get(schema.SAMPLE_INDEX):
        pairs.append(("sample", row.get(schema.SAMPLE_INDEX)))
    return [(name, fmt(value) if not isinstance(value, str) else value) for name, value in pairs if value is not None]


def _card(item: Item, categories: dict[str, Any], extras: list[str]) -> str:
    row = item.row
    row_id = str(row.get(schema.ID))
    prompt = str(row.get(schema.PROMPT) or "")
    params = _parameters(row, extras)
    search = " ".join([row_id, prompt, str(row.get(schema.NEGATIVE_PROMPT) or ""),
                       *(f"{name}={value}" for name, value in params), str(row.get("model") or "")]).lower()
    attributes = "".join(f' {attr_name(name)}="{e(fmt(row.get(name)))}"' for name in categories)
    timing = " · ".join(f"{stage[:3]} {float(row[schema.seconds_column(stage)]):.2f}s" for stage in schema.STAGES
                        if row.get(schema.seconds_column(stage)) is not None)
    negative = row.get(schema.NEGATIVE_PROMPT)
    return (
        f'<figure class="card item" data-id="{e(row_id)}" data-q="{e(search)}"{attributes}>'
        + _media(item, row_id)
        + f'<figcaption><div class="prompt" title="{e(prompt)}">{e(prompt)}'
        + (' <span class="flag" title="longer than the text encoder\'s limit: truncated">truncated</span>'
           if row.get(schema.PROMPT_TRUNCATED) else "")
        + "</div>"
        + (f'<div class="neg" title="negative prompt">− {e(truncate(str(negative), 120))}</div>' if negative else "")
        + f'<div class="id"><code>{e(row_id)}</code></div>'
        + '<div class="params">' + "".join(f'<span class="kv"><b>{e(name)}</b> {e(value)}</span>'
                                           for name, value in params) + "</div>"
        + (f'<div class="timing">{e(timing)}</div>' if timing else "")
        + "</figcaption></figure>"
    )


def _filters(categories: dict[str, list[tuple[str, int]]], placeholder: str, total: int | None) -> str:
    html = ['<div class="filters"><input type="search" class="q" placeholder="' + e(placeholder) + '">']
    for name, values in categories.items():
        counted = f" of all {total:,}" if total else ""
        html.append(f'<label>{e(name)} <select data-col="{e(attr_name(name))}"><option value="">all</option>'
                    + "".join(f'<option value="{e(value)}">{e(truncate(value, 40))} ({count:,}{counted})</option>'
                              for value, count in values) + "</select></label>")
    html.append('<span class="shown"></span></div>')
    return "".join(html)


def _gallery(view: OutputView, categories: dict[str, list[tuple[str, int]]], max_items: int) -> str:
    output = view.output
    html = [f'<h2 id="{view.panel_id}-gallery">Gallery</h2>']
    if not view.items:
        html.append('<p class="muted">No outputs in the manifest.</p>')
        return "".join(html)
    if view.sampled:
        html.append(f'<p class="note sample">Showing a deterministic sample of {len(view.items):,} of '
                    f'{output.manifest_rows:,} outputs (--max-items {max_items:,}: the ids with the smallest '
                    'sha256 of the id, the same on every report). The filter searches the sample.</p>')
    else:
        html.append(f'<p class="note">All {len(view.items):,} outputs.</p>')
    failures = sum(1 for item in view.items if item.thumb is None)
    if failures:
        html.append(f'<p class="bad">{failures} output(s) have no thumbnail (their media could not be read).</p>')
    extras = [name for name in (output.manifest.column_names if output.manifest is not None else ())
              if name not in KNOWN_COLUMNS]
    html.append('<div class="scope">' + _filters(categories, "filter by prompt, id, seed, parameter…",
                                                  output.manifest_rows))
    html.append('<div class="gallery">' + "".join(_card(item, categories, extras) for item in view.items) + "</div>")
    html.append("</div>")
    return "".join(html)


# ------------------------------------------------------------------------------------------ side by side


def _compare(views: list[OutputView], compare: CompareView) -> str:
    html = ['<h2>Side by side, by row id</h2>']
    if compare.sampled:
        html.append(f'<p class="note sample">Showing a deterministic sample of {len(compare.ids):,} of '
                    f'{compare.total_ids:,} row ids (chosen like the galleries\' samples: the smallest sha256 of the '
                    'id).</p>')
    else:
        html.append(f'<p class="note">All {len(compare.ids):,} row ids of the {len(views)} outputs.</p>')
    statuses = {"different": 0, "identical": 0, "incomplete": 0, "failed": 0}
    rows = []
    # Rows with outputs first, then those no output has (failed or missing everywhere), each by id.
    ordered = sorted(compare.ids, key=lambda row_id: (all(kind != "ok" for kind, _ in compare.cells[row_id]), row_id))
    for row_id in ordered:
        cells = compare.cells[row_id]
        items = [value for kind, value in cells if kind == "ok"]
        if not items:
            status = "failed"
        elif len(items) < len(cells):
            status = "incomplete"
        elif len({item.row.get(schema.SHA256) for item in items}) == 1:
            status = "identical"
        else:
            status = "different"
        statuses[status] += 1
        differing = _differing(items)
        prompt = next((str(item.row.get(schema.PROMPT)) for item in items), None)
        if prompt is None:
            prompt = next((_input_prompt(value) for kind, value in cells if kind == "failed"), "")
        search = " ".join([row_id, prompt or ""]).lower()
        cells_html = []
        for kind, value in cells:
            if kind == "ok":
                params = "".join(f'<span class="kv diff"><b>{e(name)}</b> '
                                 f'{e(truncate(fmt(value.row.get(name)), 60))}</span>'
                                 for name in differing)
                cells_html.append(f'<td class="cell has">{_media(value, row_id)}'
                                  f'<div class="params">{params}</div></td>')
            elif kind == "failed":
                cells_html.append(f'<td class="cell failed"><div class="nothumb">failed in '
                                  f'{e(value.get(schema.ERROR_STAGE))}: <code>{e(value.get(schema.ERROR_TYPE))}</code>'
                                  f'<br>{e(truncate(str(value.get(schema.ERROR_MESSAGE) or ""), 200))}</div></td>')
            else:
                cells_html.append('<td class="cell missing"><div class="nothumb">not in this output</div></td>')
        rows.append(f'<tr class="item cmp" data-id="{e(row_id)}" data-q="{e(search)}" data-f-status="{status}">'
                    f'<th scope="row"><code>{e(row_id)}</code><div class="prompt" title="{e(prompt)}">{e(prompt)}</div>'
                    f'<span class="status {status}">{status}</span></th>{"".join(cells_html)}</tr>')
    categories = {"status": [(name, count) for name, count in statuses.items() if count]}
    html.append('<div class="scope">' + _filters(categories, "filter by prompt or id…", None))
    header = "".join(f'<th>{e(view.output.label)}<div class="muted">{e(_output_model(view.output))}</div></th>'
                     for view in views)
    html.append(f'<div class="compare-wrap"><table class="compare"><thead><tr><th>row</th>{header}</tr></thead>'
                f'<tbody>{"".join(rows)}</tbody></table></div></div>')
    html.append('<p class="muted">Under each output: the parameters that differ between the outputs of the row. '
                '"identical": the same media bytes (sha256) in every output; "incomplete": some outputs have '
                'none (failed or not there); "failed": none has one.</p>')
    return "".join(html)


def _differing(items: list[Item]) -> list[str]:
    if len(items) < 2:
        return []
    names = sorted({name for item in items for name in item.row} - NOT_COMPARED)
    return [name for name in names if len({fmt(item.row.get(name)) for item in items}) > 1]


def _input_prompt(error_row: dict[str, Any]) -> str:
    try:
        row = json.loads(error_row.get(schema.INPUT_ROW) or "{}")
    except ValueError:
        return ""
    if isinstance(row, dict):
        for key in (schema.PROMPT, "Prompt"):
            if row.get(key) is not None:
                return str(row[key])
    return ""


def _output_model(output: Output) -> str:
    for source in (output.summary or {}, *(reversed(output.runs))):
        if source.get("model"):
            return str(source["model"])
    return ""


# ------------------------------------------------------------------------------------------ page


def render_page(views: list[OutputView], compare: CompareView | None, max_items: int) -> str:
    tabs, panels = [], []
    for index, view in enumerate(views):
        output = view.output
        categories, constant = category_columns(output.manifest)
        panel_id = view.panel_id = f"out{index + 1}"
        tabs.append(f'<button type="button" data-tab="{panel_id}">{e(output.label)}</button>')
        problems = "".join(f'<p class="bad">{e(problem)}</p>' for problem in output.problems)
        jumps = [("counts", "counts"), ("runs", f"runs ({len(output.runs)})"), ("time", "time"),
                 ("errors", f"errors ({output.error_rows:,})"), ("gallery", f"gallery ({len(view.items):,})")]
        toc = '<nav class="toc">' + " · ".join(f'<a href="#{panel_id}-{key}">{e(label)}</a>' for key, label in jumps)
        panels.append(
            f'<section class="panel" id="{panel_id}"><h1 class="where"><code>{e(output.uri)}</code></h1>'
            f'{toc}</nav>{problems}'
            + _counts(view, constant) + _runs(output, f"{panel_id}-runs") + _timings(output, f"{panel_id}-time")
            + _errors(output, f"{panel_id}-errors") + _gallery(view, categories, max_items) + "</section>")
    if compare is not None:
        tabs.append('<button type="button" data-tab="compare">side by side</button>')
        panels.append('<section class="panel" id="compare">' + _compare(views, compare) + "</section>")
    body = f'<nav class="tabs">{"".join(tabs)}</nav>{"".join(panels)}'
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = "latentmill report: " + ", ".join(view.output.label for view in views)
    template = resources.files("latentmill.report").joinpath("template.html").read_text(encoding="utf-8")
    return (template.replace("{{title}}", e(title))
            .replace("{{generated}}", e(f"made {generated} by latentmill {__version__}"))
            .replace("{{body}}", body))
