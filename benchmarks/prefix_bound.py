"""How much prefill work can prefix sharing save on a grid? Counts tokens, not seconds.

For the prompts of a detection grid (the same grid as ``bench_detect.py``), prints:

* the tokens a one-at-a-time run prefills, and the tokens left when every shared prefix is computed
  once (the size of the prompts' prefix tree), at reuse granularity 1 and at ``--chunk-size``
  (the engine reuses whole chunks so that its numbers stay bitwise equal to a cold run);
* the same for attention work, measured as the sum of the query positions (a query at position p
  attends p keys), because the tokens that cannot be shared (those after the needle) sit at the
  expensive end of the context.

    python benchmarks/prefix_bound.py                     # 2 needles x {2000,4000} x 10 depths
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer builds the prompts")
    p.add_argument("--needles", type=int, default=2, help="first N built-in needles")
    p.add_argument("--lengths", default="2000,4000")
    p.add_argument("--num-depths", type=int, default=10)
    p.add_argument("--chunk-size", type=int, default=512)
    return p.parse_args()


def shared_prefill(prompts: list[list[int]], grain: int) -> tuple[int, int]:
    """(tokens, attention work) left to prefill when each prompt reuses its predecessor's prefix.

    ``prompts`` in lexicographic order (a depth-first walk of their prefix tree); the reused part is
    rounded down to a multiple of ``grain``.
    """
    from retrieval_heads.core.engine import common_prefix_length

    tokens = work = 0
    previous: list[int] = []
    for ids in prompts:
        reuse = common_prefix_length(previous, ids) // grain * grain
        tokens += len(ids) - reuse
        work += sum(range(reuse, len(ids)))
        previous = ids
    return tokens, work


def main() -> None:
    from retrieval_heads.models import load_model
    from retrieval_heads.sweep.grid import SweepConfig, linear_grid, prepare
    from retrieval_heads.sweep.haystack import load_needles

    args = parse()
    tokenizer = load_model(args.model).tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        needles = Path(tmp) / "needles.jsonl"
        needles.write_text("".join(json.dumps(n.__dict__) + "\n" for n in load_needles()[: args.needles]))
        config = SweepConfig(model=args.model, needles=str(needles), lengths=[int(x) for x in args.lengths.split(",")],
                             depths=[round(d, 2) for d in linear_grid(0, 100, args.num_depths)])
        inputs = prepare(config, tokenizer, 1 << 20)
    prompts = sorted(inputs.prompts[spec.id].ids[:-1] for spec in inputs.specs)  # what is prefilled
    cold_tokens, cold_work = shared_prefill(prompts, grain=1 << 30)
    print(f"{len(prompts)} prompts; one at a time: {cold_tokens} tokens, attention work {cold_work:.3g}")
    for grain in (1, args.chunk_size):
        tokens, work = shared_prefill(prompts, grain)
        print(f"shared prefixes, reuse granularity {grain:4d}: {tokens} tokens ({cold_tokens / tokens:.2f}x fewer), "
              f"attention work {work:.3g} ({cold_work / work:.2f}x less)")


if __name__ == "__main__":
    main()
