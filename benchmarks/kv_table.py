"""The README's KV tables from a ``kv-eval`` output directory, with bootstrap intervals over samples.

    python benchmarks/kv_table.py runs/smollm2-135m/kv-v2/lookup/query-agnostic --against snapkv

For every condition directory ``DIR/<condition>/L<length>/`` (one setting: pass ``OUT`` or
``OUT/query-agnostic``): KV bytes right after compression and at the end of decoding (means over samples,
as fractions of the dense cache), the mean NIAH score with a 95% interval, the share of the full cache's
mean (resampled jointly with it), the samples whose answer contains the needle's answer, and with
``--against P`` the paired difference from policy ``P`` at the same budget. Only samples present in every
condition count; intervals are ``--draws`` bootstrap resamples of those samples. ``--extra LABEL=DIR`` adds
the conditions of another run on the same samples as ``LABEL:<condition>`` (``--against LABEL:snapkv``
compares with them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def read_condition(path: Path) -> tuple[dict[str, dict], dict[str, float]]:
    """Records by sample id, and the mean KV byte fractions (compressed, end) of one condition's run."""
    records = {r["id"]: r for r in map(json.loads, (path / "results.jsonl").read_text().splitlines())}
    kv = [json.loads(line) for line in (path / "kv_samples.jsonl").read_text().splitlines()]
    fractions = {
        "compressed": float(np.mean([k.get("compressed_kv_bytes", k["kv_bytes"]) /
                                     k.get("compressed_dense_kv_bytes", k["dense_kv_bytes"]) for k in kv])),
        "end": float(np.mean([k["kv_bytes"] / k["dense_kv_bytes"] for k in kv])),
    }
    return records, fractions


def runs_under(root: Path, length: int | None) -> dict[str, tuple[dict[str, dict], dict[str, float]]]:
    """Every condition run of one kv-eval setting directory, by condition name."""
    runs = sorted(root.glob(f"*/L{length or '*'}/results.jsonl"))
    if not runs:
        raise SystemExit(f"no condition runs under {root}")
    return {p.parent.parent.name: read_condition(p.parent) for p in runs}


def pooled_share(roots: list[Path], *, policy: str, budget: float, against: str = "full", length: int | None = None,
                 draws: int = 2000) -> dict:
    """The share of the full cache's mean score kept by ``policy`` at ``budget``, pooled over the samples common
    to every condition of each setting directory in ``roots``, with a 95% bootstrap interval (resampling
    samples, full and policy jointly), and ``against``'s share at the same budget (``full``: 1)."""
    scores: dict[str, list[float]] = {"full": [], policy: [], against: []}
    names = {"full": "full", policy: f"{policy}-{budget:g}", against: "full" if against == "full" else f"{against}-{budget:g}"}
    for root in roots:
        conditions = runs_under(Path(root), length)
        missing = [n for n in names.values() if n not in conditions]
        if missing:
            raise SystemExit(f"{root} has no {', '.join(missing)} condition")
        ids = sorted(set.intersection(*(set(conditions[n][0]) for n in names.values())))
        for key, name in names.items():
            scores[key] += [conditions[name][0][i]["score"] for i in ids]
    arrays = {k: np.asarray(v) for k, v in scores.items()}
    picks = np.random.default_rng(0).integers(0, len(arrays["full"]), (draws, len(arrays["full"])))
    boot = arrays[policy][picks].mean(1) / np.maximum(arrays["full"][picks].mean(1), 1e-9)
    full_mean = max(arrays["full"].mean(), 1e-9)
    return {"samples": len(arrays["full"]), "share": arrays[policy].mean() / full_mean,
            "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5)),
            "against_share": arrays[against].mean() / full_mean, "full_mean": float(arrays["full"].mean())}


def interval(values: np.ndarray) -> str:
    return f"[{np.percentile(values, 2.5):.2f}, {np.percentile(values, 97.5):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a kv-eval --out directory, or its query-agnostic/ subdirectory")
    parser.add_argument("--length", type=int, default=None, help="context length (default: the only one)")
    parser.add_argument("--against", default=None,
                        help="policy to compare with at each budget, e.g. snapkv (or LABEL:snapkv, see --extra)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--extra", action="append", default=[],
                        help="LABEL=DIR: the conditions of another kv-eval directory (same setting), as LABEL:<name>")
    args = parser.parse_args()

    root = Path(args.dir)
    conditions = runs_under(root, args.length)
    for extra in args.extra:
        label, _, where = extra.partition("=")
        if not where:
            raise SystemExit(f"--extra takes LABEL=DIR, got {extra!r}")
        conditions.update({f"{label}:{name}": found for name, found in runs_under(Path(where), args.length).items()
                           if name != "full"})
    if "full" not in conditions:
        raise SystemExit("the full condition is needed for the share of full")
    ids = sorted(set.intersection(*(set(records) for records, _ in conditions.values())))
    scores = {name: np.array([records[i]["score"] for i in ids]) for name, (records, _) in conditions.items()}
    draws = np.random.default_rng(0).integers(0, len(ids), (args.draws, len(ids)))
    full = scores["full"][draws].mean(1)
    print(f"{root}: {len(ids)} samples common to {len(conditions)} conditions")
    order = sorted(conditions, key=lambda n: (n != "full", float(n.rsplit("-", 1)[-1]) if n != "full" else 0, n))
    for name in order:
        records, kv = conditions[name]
        s = scores[name]
        boot = s[draws].mean(1)
        contained = sum(bool(records[i].get("contains_answer")) for i in ids)
        line = (f"{name:24} KV {100 * kv['compressed']:5.1f}% ({100 * kv['end']:5.1f}%)  mean {s.mean():5.1f} "
                f"[{np.percentile(boot, 2.5):.1f}, {np.percentile(boot, 97.5):.1f}]  share of full "
                f"{s.mean() / max(scores['full'].mean(), 1e-9):.2f} {interval(boot / np.maximum(full, 1e-9))}  "
                f"contains {contained}/{len(ids)}")
        if args.against and name != "full" and not name.startswith(args.against + "-"):
            base = f"{args.against}-{name.rsplit('-', 1)[-1]}"
            if base in scores:
                diff = s - scores[base]
                line += f"  vs {base}: {diff.mean():+.1f} {interval(diff[draws].mean(1))}"
        print(line)


if __name__ == "__main__":
    main()
