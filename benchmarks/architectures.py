"""Compatibility matrix: every causal-LM architecture of the installed transformers, on a tiny random model.

    python benchmarks/architectures.py                      # all architectures (about 3 min on 2 idle CPU cores)
    python benchmarks/architectures.py llama qwen3_next     # some
    python benchmarks/architectures.py --no-engine --json matrix.json

Prints ``architecture | kind | status | note`` and the counts per status (see
``retrieval_heads.compat.matrix`` for what each check does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("architectures", nargs="*", help="model types (default: all)")
    parser.add_argument("--no-engine", action="store_true", help="skip the end-to-end detection and NIAH runs")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    from retrieval_heads.compat.matrix import check_architecture
    from retrieval_heads.compat.tiny import causal_lm_architectures, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    names = args.architectures or list(causal_lm_architectures())
    rows = []
    print(f"transformers {transformers.__version__}\n| architecture | kind | status | note |\n|---|---|---|---|")
    for name in names:
        start = time.perf_counter()
        row = check_architecture(name, tokenizer, engine=not args.no_engine)
        rows.append(row)
        print(f"| {row.architecture} | {row.kind} | {row.status} | {row.note} ({time.perf_counter() - start:.1f} s) |",
              flush=True)
    counts = Counter(r.status for r in rows)
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"transformers": transformers.__version__, "rows": [asdict(r) for r in rows]}, f, indent=1)
    return 0 if not counts.get("fail") else 1


if __name__ == "__main__":
    sys.exit(main())
