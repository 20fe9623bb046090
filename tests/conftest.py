"""Shared fixtures: tiny random decoders of several families and a tiny BPE tokenizer, built in-process."""

from __future__ import annotations

import pytest
import torch


def _tiny(config_cls, model_cls, **overrides):
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=4096, head_dim=8,
    )
    base.update(overrides)
    torch.manual_seed(0)
    model = model_cls(config_cls(**base)).eval()
    if model._supports_sdpa:  # Gemma 2 soft-caps logits: eager only
        model.set_attn_implementation("sdpa")
    return model


def build_tiny(family: str):
    """A randomly initialised model of ``family`` small enough for unit tests."""
    import transformers as tf

    if family == "llama":
        return _tiny(tf.LlamaConfig, tf.LlamaForCausalLM)
    if family == "qwen2":
        return _tiny(tf.Qwen2Config, tf.Qwen2ForCausalLM)
    if family == "qwen3":
        return _tiny(tf.Qwen3Config, tf.Qwen3ForCausalLM)
    if family == "mistral":
        return _tiny(tf.MistralConfig, tf.MistralForCausalLM, sliding_window=None)
    if family == "mixtral":
        return _tiny(tf.MixtralConfig, tf.MixtralForCausalLM, num_local_experts=2, num_experts_per_tok=1)
    if family == "phi3":
        return _tiny(tf.Phi3Config, tf.Phi3ForCausalLM, pad_token_id=0)
    if family == "gemma2":
        return _tiny(tf.Gemma2Config, tf.Gemma2ForCausalLM, sliding_window=16, attn_logit_softcapping=50.0,
                     final_logit_softcapping=None, layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if family == "gemma3":
        return _tiny(tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, sliding_window=16,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "mixtral", "phi3", "gemma2", "gemma3"]


def masked_attention(visibility):
    """A slow reference attention function on a dense cache, with per-head visibility.

    ``visibility(module, q_pos, k_len, heads)`` returns the (H, Q, K) bool keys each query head sees, with
    ``q_pos`` the (Q, 1) absolute query positions; sliding-window layers run SDPA as they are.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if kwargs.get("sliding_window"):
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        h, q_len, k_len, n_rep = query.shape[1], query.shape[2], key.shape[2], module.num_key_value_groups
        visible = visibility(module, torch.arange(k_len - q_len, k_len)[:, None], k_len, h)
        scores = query @ repeat_kv(key, n_rep).transpose(2, 3) * scaling
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        return (probs @ repeat_kv(value, n_rep)).transpose(1, 2).contiguous(), None

    return attention


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 600-token byte-level BPE trained on the default haystack, with a chat-free plain prompt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from retrieval_heads.sweep.haystack import default_haystack, load_needles

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [default_haystack()[:60000]] + [n.needle for n in load_needles()]
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def builtin_needles(directory, count: int) -> str:
    """Path of a JSONL file in ``directory`` with the first ``count`` built-in needles."""
    from importlib import resources

    lines = resources.files("retrieval_heads").joinpath("data/needles.jsonl").read_text().splitlines()[:count]
    path = directory / "needles.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def tiny_kv_eval(tokenizer, directory):
    """What a fast ``run_kv_eval`` test needs: a loaded tiny llama, random scores over its 2 x 3 heads (2 KV
    heads) and a sweep of 2 built-in needles at 200 tokens, depth 50."""
    import numpy as np

    from retrieval_heads.core.head_scores import HeadScores
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tokenizer, "tiny-llama", 0.0)
    scores = HeadScores(np.random.default_rng(2).random((2, 3, 8)), meta={"num_kv_heads": 2})
    config = SweepConfig(model="tiny-llama", needles=builtin_needles(directory, 2), lengths=[200], depths=[50.0],
                         max_new_tokens=3, chunk_size=64)
    return loaded, scores, config


FORCED_ANSWER = "in the"  # three tokens with the newline in the tiny tokenizer


@pytest.fixture(scope="session")
def forced_needles(tmp_path_factory):
    """Needles whose answers are all ``FORCED_ANSWER`` (with ``forced_answer``, every sample succeeds)."""
    import json

    path = tmp_path_factory.mktemp("needles") / "forced.jsonl"
    subjects = ["lighthouse door", "harbour crane", "museum bench", "orchard gate"]
    with open(path, "w", encoding="utf-8") as f:
        for s in subjects:
            f.write(json.dumps({"needle": f"The spare key of the {s} is kept {FORCED_ANSWER} drawer.",
                                "question": f"Where is the spare key of the {s} kept?", "real_needle": FORCED_ANSWER}) + "\n")
    return str(path)


class forced_answer:
    """Make ``model`` answer ``text`` then a newline at every decode step, whatever it attends to.

    A forward hook overwrites the logits of decode steps (forward passes without ``logits_to_keep``,
    which the engine passes only while prefilling); attention, and so the probe, run unchanged. Tiny
    random models never retrieve a needle, so tests of aggregates use this to have successes.
    """

    def __init__(self, model, tokenizer, text: str = FORCED_ANSWER):
        self.model, self.ids = model, tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
        self.step, self.handles = 0, []

    def _pre(self, module, args, kwargs):
        self.decoding = "logits_to_keep" not in kwargs
        if not self.decoding:
            self.step = 0

    def _post(self, module, args, kwargs, output):
        if self.decoding:
            token = self.ids[min(self.step, len(self.ids) - 1)]
            output.logits[:, -1, :] = -1e4
            output.logits[:, -1, token] = 1e4
            self.step += 1
        return output

    def __enter__(self):
        self.handles = [self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
                        self.model.register_forward_hook(self._post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
