"""Write config-only model directories of real shapes, for benchmarks on random weights (``--random-init``).

    python benchmarks/shapes.py llama-3.1-8b /tmp/shapes/llama-3.1-8b

The shapes are the published configs' sizes (layers, heads, KV heads, widths, vocabulary, RoPE base); no
weights exist here, so speed and memory are measured on random ones. ``tiny`` is a 2-layer model for smoke
tests.
"""

from __future__ import annotations

import argparse

SHAPES = {
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=65536),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    args = parser.parse_args()
    from transformers import LlamaConfig

    LlamaConfig(**SHAPES[args.shape]).save_pretrained(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
