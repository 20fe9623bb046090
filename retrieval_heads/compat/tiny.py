"""Tiny randomly initialised models of any architecture transformers knows, for tests and compatibility checks.

``tiny_config("qwen3_next")`` takes the config class's defaults and shrinks them (2-4 layers,
hidden size 64, vocabulary 512), keeping at least one layer of each kind for hybrids and as many
KV heads as heads for latent-attention models (whose cache holds per-head keys). ``save_tiny``
writes such a model with a tokenizer to a directory, the way a user passes ``--model DIR``.
"""

from __future__ import annotations

from pathlib import Path

VOCAB = 512
HIDDEN = 64
MAX_LAYERS = 4

# Attribute -> tiny value, applied where the default config has the attribute.
SHRINK = {
    "vocab_size": VOCAB, "hidden_size": HIDDEN, "d_model": HIDDEN, "n_embd": HIDDEN, "intermediate_size": 128,
    "ffn_hidden_size": 128, "n_inner": 128, "num_attention_heads": 4, "n_head": 4, "num_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096, "n_positions": 4096,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_topk": 2,
    "n_group": 1, "topk_group": 1, "n_shared_experts": 1, "num_shared_experts": 1,
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
    "qk_head_dim": 16, "index_head_dim": 16, "index_n_heads": 2, "index_topk": 64,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_head_dim": 16, "mamba_d_state": 8, "mamba_n_groups": 1,
    "ssm_state_size": 8, "state_size": 8, "n_groups": 1, "mamba_expand": 2, "expand": 2, "time_step_rank": 8,
    "conv_L_cache": 3, "mamba_d_conv": 4, "conv_kernel": 4, "short_conv_kernel_size": 4,
    "sliding_window": 16, "attention_chunk_size": 16, "max_window_layers": 1,
    "first_k_dense_replace": 1, "num_nextn_predict_layers": 0, "initializer_range": 0.05,
}
# Families whose defaults are all one kind of layer, or whose layer kinds derive from other fields:
# after shrinking, two layers with one softmax-attention layer among them.
HYBRID_LAYOUTS = {
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    "bamba": {"attn_layer_indices": [1]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},
    "lfm2": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    # layer-index lists that must point inside the shrunk model: the indexer layer and whose KV each layer uses
    "kolibri1_1": {"index_layers": [1], "kv_source_layers": [0, 1]},
}
NULLABLE = ("head_dim",)  # set even where the default is None ("derive it"): 16 = 64 / 4 heads anyway
TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
# Attributes that must equal the number of attention heads (latent attention: one KV head per head).
MLA_MARKERS = ("kv_lora_rank",)
# Per-layer lists that decide a layer's kind, shortened together with the layer count.
LAYER_LISTS = ("layer_types", "layers_block_type", "mlp_layer_types")


def causal_lm_architectures() -> dict[str, str]:
    """``model_type -> class name`` of every causal LM of the installed transformers, decoders of
    image-text-to-text models included (their language model is what gets scored)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    archs = dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    archs.update(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    return dict(sorted(archs.items()))


def _kept_layers(kinds: list[str]) -> list[int]:
    """Indices of a short prefix-free selection holding every layer kind at least once (2 to 4 layers)."""
    keep: list[int] = []
    for kind in dict.fromkeys(kinds):
        keep.append(kinds.index(kind))
    for i in range(len(kinds)):
        if len(keep) >= 2:
            break
        if i not in keep:
            keep.append(i)
    return sorted(keep)[:MAX_LAYERS]


def _shrink(config, overrides: dict) -> None:
    """Shrink one (sub)config in place."""
    for name, value in SHRINK.items():
        if getattr(config, name, None) is not None or name in NULLABLE and hasattr(config, name):
            _set(config, name, value)
    for name in TOKEN_IDS:
        ids = getattr(config, name, None)
        if isinstance(ids, int) and ids >= VOCAB:
            _set(config, name, TOKEN_IDS.index(name))
        elif isinstance(ids, list):
            _set(config, name, [i for i in ids if i < VOCAB] or [TOKEN_IDS.index(name)])
    if any(getattr(config, m, None) for m in MLA_MARKERS):
        _set(config, "num_key_value_heads", config.num_attention_heads)
        _set(config, "head_dim", config.qk_rope_head_dim)  # the rotary part's size, for latent attention
    rope = getattr(config, "rope_parameters", None)
    heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    if isinstance(rope, dict) and head_dim and ("mrope_section" in rope or "VL" in type(config).__name__):
        rope["mrope_section"] = mrope_section(head_dim)  # multimodal RoPE: sections sum to head_dim / 2
    layers = getattr(config, "num_hidden_layers", None)
    lists = {n: list(getattr(config, n)) for n in LAYER_LISTS if isinstance(getattr(config, n, None), (list, tuple))}
    if layers:
        kinds = lists.get("layer_types") or lists.get("layers_block_type") or ["layer"] * layers
        keep = _kept_layers(list(kinds))
        config.num_hidden_layers = len(keep)
        for name, values in lists.items():
            if len(values) == layers:
                _set(config, name, [values[i] for i in keep])
    for name, value in overrides.items():
        setattr(config, name, value)


def mrope_section(head_dim: int) -> list[int]:
    """Temporal, height and width rotary sections in the 2:3:3 proportion of Qwen-VL's [16, 24, 24]."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def _set(config, name: str, value) -> None:
    """Set ``name`` unless the config derives it (a property without a setter)."""
    try:
        setattr(config, name, value)
    except AttributeError:
        pass


def tiny_config(model_type: str, **overrides):
    """The default config of ``model_type`` shrunk to a tiny model (text and vision sub-configs alike)."""
    from transformers import AutoConfig

    from transformers import PretrainedConfig

    config = AutoConfig.for_model(model_type)
    overrides = {**HYBRID_LAYOUTS.get(model_type, {}), **overrides}
    for sub in (v for v in vars(config).values() if isinstance(v, PretrainedConfig)):
        _shrink(sub, {})
    _shrink(config, overrides)
    if hasattr(config, "text_config"):
        for name, value in overrides.items():
            setattr(config.text_config, name, value)
    return config


def model_class(config):
    """The class that builds a causal LM (or image-text-to-text model) from ``config``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise ValueError(f"no causal-LM class for {type(config).__name__}")


def build_tiny(model_type: str, *, seed: int = 0, max_params: float = 20e6, **overrides):
    """A randomly initialised (seeded), tiny, eval-mode model of ``model_type``.

    Raises ``ValueError`` when the shrunk model would still have more than ``max_params`` parameters
    (counted on the meta device, before anything is allocated).
    """
    import torch

    config = tiny_config(model_type, **overrides)
    cls = model_class(config)
    with torch.device("meta"):
        size = sum(p.numel() for p in cls(config).parameters())
    if size > max_params:
        raise ValueError(f"{size / 1e6:.0f}M parameters after shrinking (limit {max_params / 1e6:.0f}M)")
    torch.manual_seed(seed)
    return cls(config).eval()


def tiny_tokenizer(vocab_size: int = 500):
    """A byte-level BPE trained on the default haystack and needles, under ``vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..sweep.haystack import default_haystack, load_needles

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([default_haystack()[:60000]] + [n.needle for n in load_needles()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def save_tiny(model, tokenizer, directory: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` to ``directory`` (loadable with ``--model DIR``)."""
    path = Path(directory)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
