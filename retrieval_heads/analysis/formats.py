"""Head-score files in and out: run directories, the paper's JSON, per-head CSV, DuoAttention TSV.

Formats:
    run directory  ``head_scores.json`` (paper JSON) + ``summary.json`` (``model``, ``num_layers``,
                   ``num_heads``, ``num_kv_heads``, ``config``).
    json           the paper's ``{"layer-head": [score per successful sample]}``.
    csv            header ``layer,head,score[,...]``, one row per head, the mean score.
    tsv            DuoAttention's attention-pattern file: one line per layer, one tab-separated
                   value per KV head.
    duo            a DuoAttention pattern directory: ``full_attention_heads.tsv`` + ``config.json``
                   (``sink_size``, ``recent_size``); see ``exports``.
    headkv         (output only) the paper's JSON on one line, ordered and checked for HeadKV's
                   loader; see ``exports``.
CSV, TSV and duo hold means only: they load as one "sample" with ``meta["aggregate"] = True``, and
TSV and duo load with ``meta["level"] = "kv"`` (their columns are KV heads).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from ..core.head_scores import HeadScores
from ..errors import UserError
from . import exports

FORMATS = ("json", "csv", "tsv")  # files, told apart by suffix or content
OUTPUT_FORMATS = (*FORMATS, "duo", "headkv")
RUN_SCORES = "head_scores.json"
RUN_SUMMARY = "summary.json"


def detect_format(path: str | Path) -> str:
    """``run``, ``duo``, ``json``, ``csv`` or ``tsv``: by directory, then suffix, then the first line."""
    p = Path(path)
    if p.is_dir():
        is_duo = (p / exports.DUO_SCORES).is_file() and not (p / RUN_SCORES).is_file()
        return "duo" if is_duo else "run"
    if not p.exists():
        raise UserError(f"score file not found: {p}")
    suffix = p.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    head = _read_text(p)[:4096].lstrip()
    if head.startswith("{"):
        return "json"
    first = head.splitlines()[0] if head else ""
    if first.replace(" ", "").lower().startswith("layer,head"):
        return "csv"
    if "\t" in first or _is_float_row(first.split()):
        return "tsv"
    raise UserError(f"{p}: cannot tell its format; name it .json, .csv or .tsv")


def load_scores(path: str | Path, *, num_kv_heads: int | None = None) -> HeadScores:
    """Head scores from a run or DuoAttention directory or a json/csv/tsv file (see the module docstring).

    ``num_kv_heads`` overrides or supplies ``meta["num_kv_heads"]``; it is checked against the
    file. Raises UserError, naming the file and line, on anything malformed.
    """
    fmt = detect_format(path)
    loader = {"run": load_run_dir, "duo": load_duo_dir, "json": load_paper_json, "csv": load_csv,
              "tsv": load_tsv}[fmt]
    scores = loader(Path(path))
    scores.meta.setdefault("format", fmt)
    scores.meta.setdefault("source", str(path))
    if num_kv_heads is not None:
        _set_kv_heads(scores, num_kv_heads, source=str(path))
    return scores


def load_run_dir(path: Path) -> HeadScores:
    """A detection run: ``head_scores.json`` with model and shape from ``summary.json`` when present."""
    scores_file = path / RUN_SCORES
    if not scores_file.is_file():
        raise UserError(f"{path}: not a run directory (no {RUN_SCORES})")
    summary = read_summary(path)
    layer_heads = summary.get("layer_heads")  # hybrids: 0 for layers without attention, absent from the JSON
    shape = (len(layer_heads), summary["num_heads"]) if layer_heads else None
    scores = load_paper_json(scores_file, shape=shape)
    if layer_heads and (scores.applicable.sum(axis=1) != np.asarray(layer_heads)).any():
        raise UserError(f"{path / RUN_SUMMARY}: layer_heads {layer_heads} do not match the heads in {RUN_SCORES}")
    scores.model = summary.get("model") or path.name
    for key, actual in (("num_layers", scores.num_layers), ("num_heads", scores.num_heads)):
        if key in summary and summary[key] != actual:
            raise UserError(f"{path / RUN_SUMMARY}: {key} is {summary[key]} but {RUN_SCORES} has {actual}")
    scores.meta.update(format="run", source=str(path), run_dir=str(path), summary=summary)
    needles = sample_needles(path, scores)
    if needles is not None:
        scores.meta["needles"] = needles
    if summary.get("num_kv_heads") is not None:
        _set_kv_heads(scores, summary["num_kv_heads"], source=str(path / RUN_SUMMARY))
    return scores


def sample_needles(path: Path, scores: HeadScores) -> list[int] | None:
    """The needle of each per-sample score, from the run's ``samples.jsonl``: each loaded sample is matched
    to the successful record holding the same scores (identical ones in file order); None when the file is
    absent or a sample has no record."""
    from ..io import read_jsonl

    waiting: dict[bytes, list[int]] = {}
    for r in read_jsonl(path / "samples.jsonl"):
        if r.get("success") and "needle_index" in r and "head_scores" in r:
            key = np.round(np.asarray(r["head_scores"], dtype=np.float64).ravel(), 6).tobytes()
            waiting.setdefault(key, []).append(int(r["needle_index"]))
    needles = []
    for sample in scores.samples:
        queue = waiting.get(np.round(sample.ravel(), 6).tobytes())
        if not queue:
            return None
        needles.append(queue.pop(0))
    return needles or None


def read_summary(run_dir: str | Path) -> dict:
    """``summary.json`` of a run directory as a dict; empty when there is none."""
    p = Path(run_dir) / RUN_SUMMARY
    if not p.is_file():
        return {}
    try:
        data = json.loads(_read_text(p))
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a JSON object")
    return data


def load_paper_json(path: Path, shape: tuple[int, int] | None = None) -> HeadScores:
    """The paper's ``{"layer-head": [scores]}`` file; ``shape`` (layers, heads) when known."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    scores = HeadScores.from_paper_dict(data, source=str(path), model=path.stem, shape=shape)
    scores.meta.update(format="json", source=str(path))
    return scores


def load_csv(path: Path) -> HeadScores:
    """``layer,head,score[,...]`` rows, one per head, as a single aggregate sample."""
    rows = csv.reader(io.StringIO(_read_text(path)))
    header = next(rows, None)
    if header is None or [c.strip().lower() for c in header[:3]] != ["layer", "head", "score"]:
        raise UserError(f"{path}: line 1: header must start with layer,head,score (got {','.join(header or [])!r})")
    cells: dict[tuple[int, int], float] = {}
    for row in rows:
        line = rows.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) < 3:
            raise UserError(f"{path}: line {line}: expected layer,head,score, got {','.join(row)!r}")
        layer, head = _index(row[0], path, line, "layer"), _index(row[1], path, line, "head")
        if (layer, head) in cells:
            raise UserError(f"{path}: line {line}: head {layer}-{head} appears twice")
        cells[layer, head] = _score(row[2], path, line)
    if not cells:
        raise UserError(f"{path}: no rows after the header")
    layers, heads = 1 + max(l for l, _ in cells), 1 + max(h for _, h in cells)
    if len(cells) != layers * heads:
        missing = next((l, h) for l in range(layers) for h in range(heads) if (l, h) not in cells)
        raise UserError(f"{path}: {len(cells)} rows for a {layers}x{heads} grid; head {missing[0]}-{missing[1]} is missing")
    mean = np.zeros((layers, heads))
    for (l, h), s in cells.items():
        mean[l, h] = s
    return HeadScores(mean[None], model=path.stem, meta={"format": "csv", "source": str(path), "aggregate": True})


def load_tsv(path: Path) -> HeadScores:
    """DuoAttention's per-(layer, KV head) file as one aggregate sample of KV-level scores."""
    values: list[list[float]] = []
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.strip().split("\t") if "\t" in text else text.split()
        row = [_score(f, path, line) for f in fields]
        if values and len(row) != len(values[0]):
            raise UserError(f"{path}: line {line}: {len(row)} values, earlier lines have {len(values[0])}")
        values.append(row)
    if not values:
        raise UserError(f"{path}: no rows")
    kv = np.asarray(values)  # (L, KV)
    meta = {"format": "tsv", "source": str(path), "aggregate": True, "level": "kv", "num_kv_heads": kv.shape[1]}
    return HeadScores(kv[None], model=path.stem, meta=meta)


def load_duo_dir(path: Path) -> HeadScores:
    """A DuoAttention pattern directory as KV-level scores; ``meta`` gains ``sink_size``, ``recent_size``."""
    config = exports.read_duo_config(path)
    scores = load_tsv(path / exports.DUO_SCORES)
    ours = config.get("retrieval_heads")
    model = config.get("model_name") or (ours.get("model") if isinstance(ours, dict) else None) or path.name
    scores.model = str(model)
    scores.meta.update(format="duo", source=str(path), sink_size=config["sink_size"],
                       recent_size=config["recent_size"])
    return scores


def save_scores(scores: HeadScores, path: str | Path, fmt: str | None = None, *,
                num_kv_heads: int | None = None, sink: int | None = None, recent: int | None = None) -> Path:
    """Write ``scores`` as json, csv, tsv, duo or headkv (default: from the suffix); returns the path.

    tsv and duo hold one value per KV head, the max over its query-head group; they need the number
    of KV heads (``num_kv_heads`` or ``meta["num_kv_heads"]``). duo writes the directory ``path``
    with ``sink``/``recent`` in its config.json (defaults ``exports.DUO_SINK``/``DUO_RECENT``);
    DuoAttention clips values to [0, 1].
    """
    from ..io import write_text_atomic

    p = Path(path)
    fmt = (fmt or p.suffix.lstrip(".")).lower()
    if not fmt:
        raise UserError(f"cannot tell the output format of {p} from its name; pass --format "
                        f"{', '.join(OUTPUT_FORMATS)}")
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"unknown score format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if fmt != "duo" and (sink is not None or recent is not None):
        raise UserError("sink and recent sizes apply to the duo format only")
    if fmt == "duo":
        return save_duo(scores, p, num_kv_heads=num_kv_heads, sink=sink, recent=recent)
    if fmt == "headkv":
        return exports.write_headkv(scores, p)
    if fmt == "json":
        if scores.meta.get("level") == "kv":
            raise UserError("KV-level scores (from a TSV) cannot be written as the paper's per-head JSON")
        text = json.dumps(scores.to_paper_dict()) + "\n"
    elif fmt == "csv":
        text = to_csv(scores)
    else:
        text = to_tsv(kv_level(scores, num_kv_heads))
    write_text_atomic(p, text)
    return p


def save_duo(scores: HeadScores, directory: Path, *, num_kv_heads: int | None = None,
             sink: int | None = None, recent: int | None = None) -> Path:
    """A DuoAttention pattern directory of ``scores``' KV-head view (max over each group)."""
    kv = kv_level(scores, num_kv_heads)  # (L, KV)
    info = {"model": scores.model, "source": scores.meta.get("source"),
            "num_layers": kv.shape[0], "num_kv_heads": kv.shape[1]}
    if scores.meta.get("level") != "kv":
        info["reduce"] = "max over each KV head's query heads"
    return exports.write_duo_pattern(
        kv, directory, info=info,
        sink=exports.DUO_SINK if sink is None else sink,
        recent=exports.DUO_RECENT if recent is None else recent,
    )


def to_csv(scores: HeadScores) -> str:
    """``layer,head,score,active_fraction`` text, one row per head (mean score, fraction > 0)."""
    mean = scores.mean
    active = (scores.samples > 0).mean(axis=0) if scores.num_samples else np.zeros(scores.shape)
    lines = ["layer,head,score,active_fraction"]
    lines += [
        f"{l},{h},{float(mean[l, h])!r},{float(active[l, h])!r}"
        for l in range(scores.num_layers)
        for h in range(scores.num_heads)
    ]
    return "\n".join(lines) + "\n"


def to_tsv(kv: np.ndarray) -> str:
    """(layers, kv_heads) scores as tab-separated lines, one per layer."""
    return exports.duo_tsv(kv)


def kv_level(scores: HeadScores, num_kv_heads: int | None = None, reduce: str = "max") -> np.ndarray:
    """(layers, kv_heads) scores: unchanged for KV-level scores, else ``reduce`` over each group."""
    n = num_kv_heads if num_kv_heads is not None else scores.meta.get("num_kv_heads")
    if scores.meta.get("level") == "kv":
        if n is not None and n != scores.num_heads:
            raise UserError(f"scores have {scores.num_heads} KV heads, not {n}")
        return scores.mean
    if n is None:
        raise UserError(
            "the number of KV heads is unknown: pass --kv-heads N "
            "(N = number of attention heads for a model without grouped-query attention)"
        )
    return scores.kv_view(int(n), reduce)


def as_kv_level(scores: HeadScores, num_kv_heads: int | None = None) -> HeadScores:
    """KV-level HeadScores (one aggregate sample), e.g. to compare with a DuoAttention TSV."""
    if scores.meta.get("level") == "kv":
        return scores
    kv = kv_level(scores, num_kv_heads)
    meta = {**scores.meta, "level": "kv", "aggregate": True, "num_kv_heads": kv.shape[1]}
    return HeadScores(kv[None], model=scores.model, meta=meta)


def _set_kv_heads(scores: HeadScores, n, *, source: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise UserError(f"{source}: number of KV heads must be a positive integer, not {n!r}")
    if scores.meta.get("level") == "kv":
        if n != scores.num_heads:
            raise UserError(f"{source}: has {scores.num_heads} KV heads per layer, not {n}")
    elif scores.num_heads % n:
        raise UserError(f"{source}: {scores.num_heads} query heads cannot be grouped into {n} KV heads")
    scores.meta["num_kv_heads"] = n


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"score file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None


def _index(text: str, path: Path, line: int, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise UserError(f"{path}: line {line}: {what} {text.strip()!r} is not an integer") from None
    if value < 0:
        raise UserError(f"{path}: line {line}: {what} {value} is negative")
    return value


def _score(text: str, path: Path, line: int) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise UserError(f"{path}: line {line}: score {text.strip()!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{path}: line {line}: score {text.strip()} must be finite and non-negative")
    return value


def _is_float_row(fields: list[str]) -> bool:
    try:
        return bool(fields) and all(math.isfinite(float(f)) for f in fields)
    except ValueError:
        return False
