"""``report.html`` of a grounding run: each answer with its tokens coloured by grounding, the cited
context passages beside it. Self-contained (inline CSS, no scripts); every text is escaped."""

from __future__ import annotations

import html
from pathlib import Path

from ..io import write_text_atomic

MAX_ITEMS = 300  # items shown; the rest are counted
WINDOW = 160  # characters of context shown on each side of a cited span

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:2px solid #3b6ea8;padding-bottom:.2em;margin-top:1.6em;font-size:1.1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f2f5f9}.meta{color:#666}.item{display:flex;gap:1.5em}.item>div{flex:1;min-width:0}
.answer{font-size:1.05em;white-space:pre-wrap}.t{border-radius:3px;padding:0 1px}
.g{background:#b7e4b0}.q{background:#c9dcf5}.u{background:#f7c6c0}.n{color:#888}
.cite{font-family:ui-monospace,monospace;font-size:.85em;background:#fafafa;border:1px solid #eee;
padding:.4em;margin:.3em 0;white-space:pre-wrap;word-break:break-word}mark{background:#ffe27a}
"""
LEGEND = ('<p class="meta"><span class="t g">grounded in the context</span> <span class="t q">copied from the '
          'question</span> <span class="t u">not grounded</span> <span class="t n">not counted (punctuation, '
          'whitespace)</span></p>')


def _e(text) -> str:
    return html.escape(str(text))


def token_class(token: dict, threshold: float) -> str:
    """CSS class: grounded, copied from the question, not grounded, or not counted."""
    if token["grounded"]:
        return "g"
    if not token["counted"]:
        return "n"
    return "q" if token["question_share"] >= threshold else "u"


def answer_html(record: dict, threshold: float) -> str:
    """The answer text with every token wrapped in a span coloured by its grounding."""
    text, out, at = record["answer"], [], 0
    for tok in record["tokens"]:
        start, end = tok["start"], tok["end"]
        if start < at:  # overlapping offsets (byte-level merges): show the characters once
            continue
        out.append(_e(text[at:start]))
        cls = token_class(tok, threshold)
        where = f"context[{tok['source'][0]}:{tok['source'][1]}]" if tok["source"] else "no source"
        title = f"share {tok['share']:.2f}, question {tok['question_share']:.2f}, {where}, logprob {tok['logprob']:.2f}"
        out.append(f'<span class="t {cls}" title="{_e(title)}">{_e(text[start:end])}</span>')
        at = end
    out.append(_e(text[at:]))
    return "".join(out)


def citation_html(context: str, span: dict) -> str:
    """The context around one span, the cited characters marked."""
    c0, c1 = span["context_start"], span["context_end"]
    lo, hi = max(0, c0 - WINDOW), min(len(context), c1 + WINDOW)
    return (f'<div class="cite">context[{c0}:{c1}]: {"…" if lo else ""}{_e(context[lo:c0])}<mark>{_e(context[c0:c1])}'
            f'</mark>{_e(context[c1:hi])}{"…" if hi < len(context) else ""}</div>')


def item_html(record: dict, context: str, threshold: float) -> str:
    g = record["grounding"]
    label = f", label {record['label']}" if "label" in record else ""
    label += f" ({record['verdict']})" if "verdict" in record else ""
    head = (f"<h2>{_e(record['id'])}: grounding {'-' if g is None else f'{g:.2f}'}{_e(label)}</h2>"
            f"<p class='meta'>Q: {_e(record.get('question', ''))}</p>")
    cites = "".join(citation_html(context, s) for s in record["spans"]) or "<p class='meta'>no span cited</p>"
    return (f'{head}<div class="item"><div><div class="answer">{answer_html(record, threshold)}</div></div>'
            f"<div>{cites}</div></div>")


def summary_html(summary: dict) -> str:
    heads = ", ".join(f"{h['layer']}-{h['head']} ({h['weight']:.2f})" for h in summary.get("heads_used", []))
    rows = [f"<p>{summary['n']} items; mean grounding {_fmt(summary['mean_grounding'])}; "
            f"token threshold {summary.get('threshold')}; heads (weight): {_e(heads)}</p>"]
    if summary.get("auroc"):
        cells = "".join(
            f"<tr><td>{_e(r['score'])}</td><td>{_fmt(r['auroc'])}</td><td>[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            f"</td><td>{r['n']}</td><td>{r['positives']}</td></tr>" for r in summary["auroc"])
        rows.append("<table><tr><th>score</th><th>AUROC</th><th>95% CI (bootstrap)</th><th>n</th><th>correct</th>"
                    f"</tr>{cells}</table>")
    return "".join(rows)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(records: list[dict], summary: dict, contexts: dict[str, str]) -> str:
    threshold = summary.get("threshold", 0.5)
    shown = records[:MAX_ITEMS]
    more = f"<p class='meta'>{len(records) - len(shown)} more items in results.jsonl</p>" if len(records) > len(shown) else ""
    body = "".join(item_html(r, contexts.get(r["id"], ""), threshold) for r in shown)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>grounding report</title><style>{CSS}</style>"
            f"</head><body><h1>Grounding report: {_e(summary.get('model', ''))}</h1>{summary_html(summary)}{LEGEND}"
            f"{body}{more}</body></html>")


def write_report(records: list[dict], summary: dict, path: str | Path, *, contexts: dict[str, str]) -> Path:
    write_text_atomic(path, render(records, summary, contexts))
    return Path(path)
