"""RULER's 13 tasks (Hsieh et al. 2024, arXiv 2404.06654) as seeded needle sets.

A set is named ``ruler:<task>[:seed=S][:n=N]`` wherever ``--needles`` is accepted, e.g.
``ruler:niah_single_2:seed=3``: N samples (default 8), drawn from ``random.Random(S)`` (default 0), the same
bytes for the same name on every machine. Written from the published task definitions (the paper and
RULER's ``synthetic.yaml``), no RULER code.

The NIAH family (``niah_*``) hides needles in a haystack at the sweep's depths. Each needle follows RULER's
template::

    One of the special magic {numbers|uuids} for {key} is: {value}.

with an ``adjective-noun`` word key (``words.ADJECTIVES`` x ``words.NOUNS``, keys distinct within a set) or a
UUID key, and a 7-digit number or a UUID as the value; the question is RULER's, "What is the special magic
{number|uuid} for {key} mentioned in the provided text?" for one value, "What are all the special magic
{numbers|uuids} for {keys} mentioned in the provided text?" for several. Multi-needle tasks give a
``MultiNeedle``: the first needle asked about goes in at the sweep's depth, the others at depths drawn
from RULER's 40 depths (0, 3, 5, ..., 100), spread over the context as RULER spreads them.

- niah_multikey_1: 4 keys on the essays, one asked (the other three are distractors);
- niah_multikey_2, niah_multikey_3: one needle in a haystack made of distractor needles (``own_haystack``;
  multikey_3 with UUID keys and values); no distractor shares a key with the set's needles;
- niah_multivalue: 4 values for one key, all asked; niah_multiquery: 4 keys, all asked.

Tasks with no needle to hide (``vt``, ``cwe``, ``fwe``: ``ruler_synthetic``; ``qa_1``, ``qa_2``: ``ruler_qa``)
build each sample's whole context to fill its length (``sweep.contexts``). Answers are scored by RULER's
string match: "all" (every value), "part" (any gold answer) for QA (``scoring.answer_score``).

A task names its haystack: niah_single_1 is defined by RULER's noise (``ruler-noise``; another ``--haystack``
is refused), the other essay tasks use RULER's essays (``paul-graham``) unless ``--haystack`` names another;
tasks that make their own haystack or context take no ``--haystack``. Where RULER differs from a sweep:
RULER samples one depth per sample and uses its own prompt template; here the (first) needle goes in at each
depth of the sweep's grid, at a sentence boundary, inside the project's prompt.
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
QUESTION_ALL = "What are all the special magic {kind} for {keys} mentioned in the provided text?"
DEFAULT_SEED = 0
DEFAULT_COUNT = 8  # as many as the built-in needles
METRIC = "string_match_all"
# RULER's needle positions: np.round(np.linspace(0, 100, 40)), in percent
DEPTHS = tuple(round(i * 100 / 39) for i in range(40))
# the haystack of distractor needles (niah_multikey_2, _3) holds about this many characters (like ruler-noise's
# 4,096 lines); a sweep's Haystack repeats it past that, which adds no conflicting key
NEEDLE_HAYSTACK_CHARS = 400_000


@dataclass(frozen=True)
class RulerTask:
    """One RULER task: for NIAH its key and value types, needle counts and the haystack it names; for the
    others the family whose contexts it builds (``vt``, ``cwe``, ``fwe``, ``qa``) and its data set."""

    name: str
    value_type: str = "numbers"  # "numbers" or "uuids" (RULER's type_needle_v)
    haystack: str | None = "paul-graham"  # a name in sources.haystacks.HAYSTACKS; None: the task makes its own
    haystack_fixed: bool = False  # the task is defined by its haystack: --haystack may not replace it
    key_type: str = "words"  # "words" or "uuids" (RULER's type_needle_k)
    keys: int = 1  # RULER's num_needle_k: keys hidden per sample
    values: int = 1  # num_needle_v: values per key
    queries: int = 1  # num_needle_q: keys asked about
    family: str = "niah"  # niah, vt, cwe, fwe, qa
    metric: str = METRIC
    dataset: str | None = None  # qa: squad or hotpotqa

    @property
    def not_one_needle(self) -> str | None:
        """Why answers to this task are not copied from one needle (``detect`` and ``lookup`` refuse it), or None."""
        if self.family != "niah":
            return "has no needle (it builds its own context)"
        if self.values * self.queries > 1:
            return f"asks for {self.values * self.queries} values, each copied from its own needle"
        return None


RULER_TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        RulerTask("niah_single_1", "numbers", "ruler-noise", haystack_fixed=True),
        RulerTask("niah_single_2", "numbers", "paul-graham", haystack_fixed=False),
        RulerTask("niah_single_3", "uuids", "paul-graham", haystack_fixed=False),
        RulerTask("niah_multikey_1", "numbers", keys=4),
        RulerTask("niah_multikey_2", "numbers", None, haystack_fixed=True),
        RulerTask("niah_multikey_3", "uuids", None, haystack_fixed=True, key_type="uuids"),
        RulerTask("niah_multivalue", "numbers", values=4),
        RulerTask("niah_multiquery", "numbers", keys=4, queries=4),
        RulerTask("vt", None, None, haystack_fixed=True, family="vt"),
        RulerTask("cwe", None, None, haystack_fixed=True, family="cwe"),
        RulerTask("fwe", None, None, haystack_fixed=True, family="fwe"),
        RulerTask("qa_1", None, None, haystack_fixed=True, family="qa", metric="string_match_part", dataset="squad"),
        RulerTask("qa_2", None, None, haystack_fixed=True, family="qa", metric="string_match_part",
                  dataset="hotpotqa"),
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


def ruler_needle_set(named: RulerNeedles):
    """The ``NeedleSet`` a parsed name gives: its needles (or, for a task with no needle, its items and contexts),
    metric and haystack."""
    from ..haystack import NeedleSet

    task = named.task
    if task.family != "niah":
        contexts = _contexts(task, named.seed, named.count)
        return NeedleSet(contexts.items, task.metric, None, True, named.name, contexts=contexts,
                         not_one_needle=task.not_one_needle)
    needles, keys = _draw_needles(task, named.seed, named.count)
    own = needle_haystack(task, named.seed, exclude=keys) if task.haystack is None else None
    return NeedleSet(tuple(needles), task.metric, task.haystack, task.haystack_fixed, named.name, own_haystack=own,
                     not_one_needle=task.not_one_needle)


def ruler_needles(task: RulerTask, *, seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> list:
    """``count`` needles (one per sample) of the NIAH ``task`` drawn from ``random.Random(seed)``: per key a key
    (redrawn while it repeats an earlier key of the set), then its values, as RULER draws them; for a task with
    several needles, then which keys are asked and the depths of the needles after the first."""
    if task.family != "niah":
        raise UserError(f"{task.name} has no needles: it builds its own contexts (load_needle_set('ruler:{task.name}'))")
    return _draw_needles(task, seed, count)[0]


def _draw_needles(task: RulerTask, seed: int, count: int) -> tuple[list, set[str]]:
    from ..haystack import MultiNeedle, Needle

    if task.key_type == "words" and count * task.keys > len(ADJECTIVES) * len(NOUNS):
        raise UserError(f"{task.name}: at most {len(ADJECTIVES) * len(NOUNS) // task.keys} samples have distinct "
                        f"keys, not {count}")
    rng = random.Random(seed)
    kind, kind_one = task.value_type, task.value_type[:-1]  # RULER's singular for one query and one value
    keys: set[str] = set()
    needles = []
    for _ in range(count):
        drawn = []  # (key, values)
        for _ in range(task.keys):
            key = _draw_key(rng, task.key_type)
            while key in keys:
                key = _draw_key(rng, task.key_type)
            keys.add(key)
            drawn.append((key, [_draw_value(rng, task.value_type) for _ in range(task.values)]))
        if len(drawn) == 1 and task.values == 1:  # one needle: RULER's single-needle form, drawn as always
            key, (value,) = drawn[0]
            needles.append(Needle(NEEDLE.format(kind=kind, key=key, value=value),
                                  QUESTION.format(kind_one=kind_one, key=key), value))
            continue
        asked = rng.sample(range(task.keys), task.queries)
        pairs = [(key, value) for key, values in drawn for value in values]
        first = (drawn[asked[0]][0], drawn[asked[0]][1][0])
        others = [pair for pair in pairs if pair != first]
        depths = rng.sample(DEPTHS, len(others))
        values = [value for i in asked for value in drawn[i][1]]
        asked_keys = [drawn[i][0] for i in asked]
        if len(values) == 1:
            question = QUESTION.format(kind_one=kind_one, key=asked_keys[0])
        else:
            question = QUESTION_ALL.format(kind=kind, keys=_join_keys(asked_keys))
        needles.append(MultiNeedle(
            NEEDLE.format(kind=kind, key=first[0], value=first[1]), question, ", ".join(values),
            others=tuple(NEEDLE.format(kind=kind, key=k, value=v) for k, v in others),
            other_depths=tuple(float(d) for d in depths), values=tuple(values)))
    return needles, keys


def needle_haystack(task: RulerTask, seed: int = DEFAULT_SEED, *, exclude: set[str] = frozenset()) -> str:
    """RULER's haystack of distractor needles (niah_multikey_2, _3): needles with random keys and values, one a
    line, about ``NEEDLE_HAYSTACK_CHARS`` characters, none with a key in ``exclude`` (the set's own keys)."""
    rng = random.Random(f"{PREFIX}{task.name}:seed={seed}:haystack")
    lines, chars = [], 0
    while chars < NEEDLE_HAYSTACK_CHARS:
        key = _draw_key(rng, task.key_type)
        if key in exclude:
            continue
        lines.append(NEEDLE.format(kind=task.value_type, key=key, value=_draw_value(rng, task.value_type)))
        chars += len(lines[-1]) + 1
    return "\n".join(lines)


def _join_keys(keys: list[str]) -> str:
    """RULER's list of keys asked: "a", or "a, b, and c"."""
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _contexts(task: RulerTask, seed: int, count: int):
    if task.family == "qa":
        from .ruler_qa import QaContexts

        return QaContexts(task.name, task.dataset, seed=seed, count=count)
    from .ruler_synthetic import SYNTHETIC

    return SYNTHETIC[task.family](seed=seed, count=count)


def _draw_key(rng: random.Random, key_type: str = "words") -> str:
    if key_type == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{ADJECTIVES[rng.randrange(len(ADJECTIVES))]}-{NOUNS[rng.randrange(len(NOUNS))]}"


def _draw_value(rng: random.Random, value_type: str) -> str:
    if value_type == "numbers":
        return str(rng.randrange(10**6, 10**7))  # 7 digits, RULER's randint(10**6, 10**7 - 1)
    if value_type == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value type {value_type}")
