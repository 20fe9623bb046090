"""How much of a long prefill is attention? The number behind the prefix-sharing bound in the README.

Times one single-call prefill of random tokens with SDPA, then with attention replaced by a
shape-correct no-op (projections, MLPs, norms and the last-position logits unchanged); the
difference is attention's share. Best of two runs each.

    python benchmarks/attention_share.py                  # smollm2-135m, 4000 tokens
"""

from __future__ import annotations

import argparse
import time

import torch


def skip_attention(module, query, key, value, attention_mask, **kwargs):
    """(B, H, Q, D) query -> (B, Q, H, D), the shape attention returns; no attention computed."""
    return query.transpose(1, 2).contiguous(), None


def main() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from retrieval_heads.models import load_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4000)
    args = parser.parse_args()

    AttentionInterface.register("skip_attention", skip_attention)
    AttentionMaskInterface.register("skip_attention", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model = load_model(args.model).model
    ids = torch.randint(100, 40000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    seconds: dict[str, list[float]] = {}
    with torch.no_grad():
        for impl in ("sdpa", "skip_attention") * 2:
            model.set_attn_implementation(impl)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            seconds.setdefault(impl, []).append(time.perf_counter() - start)
    full, rest = min(seconds["sdpa"]), min(seconds["skip_attention"])
    print(f"{args.tokens}-token prefill, {torch.get_num_threads()} threads: SDPA {full:.2f} s, attention skipped "
          f"{rest:.2f} s, attention {100 * (full - rest) / full:.0f}% of the prefill")


if __name__ == "__main__":
    main()
