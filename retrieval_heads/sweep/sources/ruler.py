"""RULER's single-needle NIAH tasks (Hsieh et al. 2024, arXiv 2404.06654) as seeded needle sets.

A needle set is named ``ruler:<task>[:seed=S][:n=N]`` wherever ``--needles`` is accepted, e.g.
``ruler:niah_single_2:seed=3``: N needles (default 8), drawn from ``random.Random(S)`` (default 0), the
same bytes for the same name on every machine. Each needle follows RULER's template::

    One of the special magic {numbers|uuids} for {key} is: {value}.

with an ``adjective-noun`` word key (``words.ADJECTIVES`` x ``words.NOUNS``, keys distinct within a set)
and a 7-digit number or a UUID as the value; the question is RULER's single-query form, "What is the
special magic {number|uuid} for {key} mentioned in the provided text?", and the answer the value. Answers
are scored by RULER's string match (``scoring.string_match_all``).

A task names its haystack: niah_single_1 is defined by RULER's noise (``ruler-noise``; another
``--haystack`` is refused), niah_single_2 and niah_single_3 use RULER's essays (``paul-graham``) unless
``--haystack`` names another. Where RULER differs from a sweep: RULER samples one depth per sample and
uses its own prompt template; here the needle goes in at each depth of the sweep's grid, at a sentence
boundary, inside the project's prompt.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from ...errors import UserError
from .haystacks import did_you_mean
from .words import ADJECTIVES, NOUNS

PREFIX = "ruler:"
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
QUESTION = "What is the special magic {kind_one} for {key} mentioned in the provided text?"
DEFAULT_SEED = 0
DEFAULT_COUNT = 8  # as many as the built-in needles
METRIC = "string_match_all"


@dataclass(frozen=True)
class RulerTask:
    """One RULER NIAH task: its key and value types and the haystack it names."""

    name: str
    value_type: str  # "numbers" or "uuids" (RULER's type_needle_v)
    haystack: str  # a name in sources.haystacks.HAYSTACKS
    haystack_fixed: bool  # the task is defined by its haystack: --haystack may not replace it
    key_type: str = "words"


RULER_TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        RulerTask("niah_single_1", "numbers", "ruler-noise", haystack_fixed=True),
        RulerTask("niah_single_2", "numbers", "paul-graham", haystack_fixed=False),
        RulerTask("niah_single_3", "uuids", "paul-graham", haystack_fixed=False),
    )
}


@dataclass(frozen=True)
class RulerNeedles:
    """A parsed ``ruler:`` name: the task, the seed and the number of needles."""

    task: RulerTask
    seed: int = DEFAULT_SEED
    count: int = DEFAULT_COUNT

    @property
    def name(self) -> str:
        """The canonical name (every option spelled out)."""
        return f"{PREFIX}{self.task.name}:seed={self.seed}:n={self.count}"


def is_ruler_name(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_ruler_name(spec: str) -> RulerNeedles:
    """``ruler:<task>[:seed=S][:n=N]`` -> RulerNeedles; a UserError saying what is wrong otherwise."""
    if not is_ruler_name(spec):
        raise UserError(f"'{spec}' is not a RULER needle set (ruler:<task>[:seed=S][:n=N])")
    task_name, *options = spec[len(PREFIX):].split(":")
    if task_name not in RULER_TASKS:
        raise UserError(f"Unknown RULER task '{task_name}'.{did_you_mean(task_name, RULER_TASKS)} "
                        f"RULER tasks: {', '.join(RULER_TASKS)}.")
    values = {"seed": DEFAULT_SEED, "n": DEFAULT_COUNT}
    for option in options:
        key, _, value = option.partition("=")
        if key not in values or not value.strip().isdigit():
            raise UserError(f"'{spec}': options are seed=S and n=N with whole numbers, e.g. "
                            f"{PREFIX}{task_name}:seed=3:n=20; got '{option}'")
        values[key] = int(value)
    if values["n"] < 1:
        raise UserError(f"'{spec}': n must be at least 1")
    return RulerNeedles(RULER_TASKS[task_name], seed=values["seed"], count=values["n"])


def ruler_needles(task: RulerTask, *, seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> list:
    """``count`` needles of ``task`` drawn from ``random.Random(seed)``: per needle a key (redrawn while it
    repeats an earlier key), then a value, as RULER draws them."""
    from ..haystack import Needle

    if count > len(ADJECTIVES) * len(NOUNS):
        raise UserError(f"{task.name}: at most {len(ADJECTIVES) * len(NOUNS)} needles have distinct keys, not {count}")
    rng = random.Random(seed)
    kind, kind_one = task.value_type, task.value_type[:-1]  # RULER's singular for one query and one value
    keys: set[str] = set()
    needles = []
    for _ in range(count):
        key = _draw_key(rng)
        while key in keys:
            key = _draw_key(rng)
        keys.add(key)
        value = _draw_value(rng, task.value_type)
        needles.append(Needle(NEEDLE.format(kind=kind, key=key, value=value),
                              QUESTION.format(kind_one=kind_one, key=key), value))
    return needles


def _draw_key(rng: random.Random) -> str:
    return f"{ADJECTIVES[rng.randrange(len(ADJECTIVES))]}-{NOUNS[rng.randrange(len(NOUNS))]}"


def _draw_value(rng: random.Random, value_type: str) -> str:
    if value_type == "numbers":
        return str(rng.randrange(10**6, 10**7))  # 7 digits, RULER's randint(10**6, 10**7 - 1)
    if value_type == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value type {value_type}")
