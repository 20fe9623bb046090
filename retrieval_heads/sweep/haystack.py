"""Haystack text, needles and needle sets, prompt building, needle insertion and needle span lookup."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UserError
from ..io import parse_json_object

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
DOC_OPEN = "This is a very long document: <document>\n"
DOC_CLOSE = "\n</document>\nBased on the content of the document, answer the question in one sentence.\nQuestion: {question}"
PLAIN_TAIL = "\nAnswer:"
# the prompt's document ends with this line; the question part (instruction, question, chat template's
# tail) starts right after it
DOCUMENT_END = DOC_CLOSE[: DOC_CLOSE.index("\n", 1) + 1]


@dataclass(frozen=True)
class Needle:
    """One fact to hide: the sentence inserted, the question asked, the answer expected."""

    needle: str
    question: str
    real_needle: str

    @property
    def sentences(self) -> tuple[str, ...]:
        """Every sentence hidden in the haystack for this sample (the needle alone)."""
        return (self.needle,)

    @property
    def answers(self) -> tuple[str, ...]:
        """The values an answer is scored against (the expected answer alone)."""
        return (self.real_needle,)

    def fingerprint(self) -> str:
        """What a run's identity hashes of this needle."""
        return f"{self.needle}\x00{self.question}\x00{self.real_needle}\x01"


@dataclass(frozen=True)
class MultiNeedle(Needle):
    """Several needles hidden in one haystack (RULER's multi-key, multi-value and multi-query NIAH).

    ``needle`` is the first sentence asked about: it goes in at the sweep's depth, and it is the span
    ``detect`` and ``lookup`` score. ``others`` go in at ``other_depths`` (percent of the context, one each):
    distractors with other keys, or more values asked for. ``values`` are all the values the answer must
    hold; ``real_needle`` is them joined by ", ".
    """

    others: tuple[str, ...] = ()
    other_depths: tuple[float, ...] = ()
    values: tuple[str, ...] = ()

    @property
    def sentences(self) -> tuple[str, ...]:
        return (self.needle, *self.others)

    @property
    def answers(self) -> tuple[str, ...]:
        return self.values or (self.real_needle,)

    def fingerprint(self) -> str:
        depths = ",".join(f"{d:g}" for d in self.other_depths)
        return super().fingerprint() + "\x02".join(("", *self.others, depths, *self.values)) + "\x01"


@dataclass(frozen=True)
class TaskItem(Needle):
    """One sample of a task with no needle to hide (RULER's vt, cwe, fwe, qa_1, qa_2): its question and the
    values expected. Its context is built per context length by the set's ``contexts`` (``sweep.contexts``);
    ``needle`` is empty and ``real_needle`` is the values joined by ", "."""

    values: tuple[str, ...] = ()

    @property
    def sentences(self) -> tuple[str, ...]:
        return ()

    @property
    def answers(self) -> tuple[str, ...]:
        return self.values or (self.real_needle,)

    def fingerprint(self) -> str:
        return super().fingerprint() + "\x02".join(("", *self.values)) + "\x01"


@dataclass(frozen=True)
class Prompt:
    """A tokenised needle-in-a-haystack prompt.

    ``needle_span`` is the [start, end) token range of the needle inside ``ids`` (None for a task with no
    needle, whose context was built whole).
    """

    ids: list[int]
    needle_span: tuple[int, int] | None
    text: str


@dataclass(frozen=True)
class NeedleSet:
    """Needles with what their name brings: the metric answers are scored by, and the haystack a named set uses.

    ``haystack`` is the haystack the set names (None: ``--haystack`` or the default prose);
    ``haystack_fixed`` means the set is defined by it and another ``--haystack`` is refused.
    ``own_haystack`` is a haystack the set generates itself (RULER's haystack of distractor needles), used
    as it is. ``contexts`` builds each sample's whole context for a task with no needle to hide (no
    haystack, no depth; ``sweep.contexts``). ``one_needle``: each answer is copied from one needle, the
    span ``detect`` and ``lookup`` score; ``not_one_needle`` says why not.
    """

    needles: tuple[Needle, ...]
    metric: str = "rouge1_recall"
    haystack: str | None = None
    haystack_fixed: bool = False
    name: str = "built-in needles"
    own_haystack: str | None = None
    contexts: object | None = None  # a sweep.contexts.ContextTask
    not_one_needle: str | None = None

    @property
    def one_needle(self) -> bool:
        return self.not_one_needle is None

    @property
    def has_depth(self) -> bool:
        """Whether the sweep's depths mean anything: a needle goes in at each (not for ``contexts`` tasks)."""
        return self.contexts is None

    def haystack_for(self, requested: str | None) -> str | None:
        """The haystack to load: ``requested`` (``--haystack``) where the set allows, else the set's own."""
        if requested is not None and (self.contexts is not None or self.own_haystack is not None):
            made = "its own context" if self.contexts is not None else "its own haystack of distractor needles"
            raise UserError(f"{self.name} builds {made}; drop --haystack {requested}")
        if requested is None:
            return self.haystack
        if self.haystack_fixed and requested != self.haystack:
            raise UserError(f"{self.name} is defined by its haystack {self.haystack}; drop --haystack {requested} "
                            "(or use a needle set that takes another haystack)")
        return requested

    def haystack_text(self, requested: str | None = None) -> str:
        """The text a run's identity hashes as its haystack: the haystack loaded (``load_haystack``), the set's own,
        or, for ``contexts`` tasks, what their contexts are built from (``contexts.identity``)."""
        name = self.haystack_for(requested)
        if self.contexts is not None:
            return self.contexts.identity
        if self.own_haystack is not None:
            return self.own_haystack
        return load_haystack(name)

    def require_one_needle(self, command: str) -> None:
        """Refuse, in one line, a set whose answers are not copied from one needle span (``detect``, ``lookup``)."""
        if not self.one_needle:
            raise UserError(f"{command} scores the one needle an answer is copied from; {self.name} {self.not_one_needle}: "
                            "run it with niah or kv-eval")


def needles_metric(spec: str | None) -> str:
    """How answers to the needle set ``spec`` are scored: RULER's string match for RULER sets ("all", or "part"
    for its QA tasks), ROUGE-1 recall (the paper's) otherwise. A name is enough: no needle is read."""
    from .sources.ruler import is_ruler_name, parse_ruler_name

    return parse_ruler_name(spec).task.metric if is_ruler_name(spec) else "rouge1_recall"


def require_one_needle(spec: str | None, command: str) -> None:
    """``NeedleSet.require_one_needle`` from the set's name alone (nothing is read or generated): ``detect``
    and ``lookup`` refuse, before a model is loaded, a set whose answers are not copied from one needle."""
    from .sources.ruler import is_ruler_name, parse_ruler_name

    if is_ruler_name(spec):
        named = parse_ruler_name(spec)
        NeedleSet((), name=named.name, not_one_needle=named.task.not_one_needle).require_one_needle(command)


def load_needle_set(spec: str | Path | None = None) -> NeedleSet:
    """The needle set ``spec`` names: a JSONL file in the paper's format, a generated set
    (``ruler:<task>[:seed=S][:n=N]``, see ``sources.ruler``), or the project's own set when None."""
    from .sources.ruler import is_ruler_name, parse_ruler_name, ruler_needle_set

    if isinstance(spec, str) and is_ruler_name(spec):
        return ruler_needle_set(parse_ruler_name(spec))
    return NeedleSet(tuple(_read_needles(spec)), needles_metric(None), name=str(spec) if spec else "built-in needles")


def load_needles(path: str | Path | None = None) -> list[Needle]:
    """The needles of ``path``: a JSONL file in the paper's format, a generated set's name
    (``ruler:...``), or the project's own set when None."""
    return list(load_needle_set(path).needles)


def _read_needles(path: str | Path | None) -> list[Needle]:
    if path is None:
        text = resources.files("retrieval_heads").joinpath("data/needles.jsonl").read_text(encoding="utf-8")
        source = "built-in needles"
    else:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"Needles file not found: {p}{_named_set_hint(str(path))}")
        text, source = p.read_text(encoding="utf-8"), str(p)
    needles = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            needles.append(_parse_needle(line, f"{source}:{lineno}"))
    if not needles:
        raise UserError(f"{source} holds no needles")
    return needles


def _named_set_hint(spec: str) -> str:
    """For a --needles value that looks like a set's name: the closest RULER set, and how names are spelled."""
    if any(c in spec for c in "/\\."):
        return ""
    from .sources.haystacks import did_you_mean
    from .sources.ruler import PREFIX, RULER_TASKS

    names = [PREFIX + t for t in RULER_TASKS]
    close = did_you_mean(spec, names) or did_you_mean(PREFIX + spec, names)
    return f".{close} Named sets: {', '.join(names)} (options :seed=S:n=N)."


def _parse_needle(line: str, where: str) -> Needle:
    row = parse_json_object(line, where)
    missing = [k for k in ("needle", "question", "real_needle") if not isinstance(row.get(k), str) or not row[k].strip()]
    if missing:
        raise UserError(f"{where}: missing or empty field(s) {', '.join(missing)}")
    return Needle(row["needle"].strip(), row["question"].strip(), row["real_needle"].strip())


def default_haystack() -> str:
    """Prose paragraphs of Python's own reference manual (``pydoc_data.topics``), always offline."""
    from pydoc_data import topics

    paragraphs = []
    for key in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[key]):
            if _is_prose(block):
                paragraphs.append(" ".join(block.split()))
    return "\n\n".join(paragraphs)


def _is_prose(block: str) -> bool:
    lines = block.strip("\n").splitlines()
    if not lines or any(line.startswith((" ", "\t")) for line in lines):
        return False  # code, grammar and indented examples
    text = " ".join(line.strip() for line in lines)
    return len(text) > 200 and text.endswith(".") and "::=" not in text and "***" not in text


def load_haystack(path: str | Path | None = None) -> str:
    """Haystack text: a name (``sources.haystacks.HAYSTACKS``: paul-graham, ruler-noise, ...), a .txt file or
    a directory of them; the default prose when None. The one place a ``--haystack`` value is resolved."""
    if path is None:
        return default_haystack()
    from .sources.haystacks import HAYSTACKS, haystack_text, unknown_haystack

    if isinstance(path, str) and path in HAYSTACKS:
        return haystack_text(path)
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.txt"))
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    elif p.is_file():
        text = p.read_text(encoding="utf-8", errors="replace")
    elif isinstance(path, str) and not any(c in path for c in "/\\."):
        raise UserError(unknown_haystack(path))
    else:
        raise UserError(f"Haystack not found: {p}")
    if not text.strip():
        raise UserError(f"Haystack {p} is empty (a directory needs .txt files with text)")
    return text.strip()


class Haystack:
    """A haystack tokenised once, cut to any token budget at character positions.

    The text is repeated until it holds ``min_tokens`` tokens, like the paper's repeated essays.
    """

    def __init__(self, text: str, tokenizer, min_tokens: int):
        if not text.strip():
            raise UserError("Haystack is empty")
        unit = text.strip()
        ends = self._token_ends(tokenizer, unit)
        repeats = max(-(-min_tokens // max(len(ends), 1)) if ends else 1, 1)
        self.text = "\n\n".join([unit] * repeats)
        self.token_ends = ends if repeats == 1 else self._token_ends(tokenizer, self.text)

    @staticmethod
    def _token_ends(tokenizer, text: str) -> list[int]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [end for _, end in enc["offset_mapping"]]

    def cut(self, num_tokens: int) -> str:
        """The first ``num_tokens`` tokens' worth of text (whole tokens)."""
        if num_tokens <= 0:
            return ""
        return self.text[: self.token_ends[min(num_tokens, len(self.token_ends)) - 1]]


def insertion_point(context: str, depth_percent: float) -> int:
    """Character offset of the sentence boundary at or before ``depth_percent`` of ``context``."""
    if depth_percent >= 100:
        return len(context)
    target = int(len(context) * depth_percent / 100)
    best = 0
    for match in SENTENCE_END.finditer(context, 0, target + 1):
        best = match.end()
    return best


def insert_needle(context: str, needle: str, depth_percent: float) -> tuple[str, int, int]:
    """Insert ``needle`` at a sentence boundary; return the text and the needle's [start, end) chars."""
    at = insertion_point(context, depth_percent)
    before, after = context[:at].rstrip(), context[at:].lstrip()
    head = before + (" " if before else "")
    text = head + needle + (" " + after if after else "")
    return text, len(head), len(head) + len(needle)


def insert_needles(context: str, needles: list[tuple[str, float]]) -> tuple[str, list[tuple[int, int]]]:
    """Insert several needles, each ``(sentence, depth_percent)`` at the sentence boundary at or before its depth;
    return the text and each needle's [start, end) chars, in the order given. Needles at the same boundary keep
    the order given; one needle gives what ``insert_needle`` gives."""
    points = [insertion_point(context, depth) for _, depth in needles]
    order = sorted(range(len(needles)), key=lambda i: points[i])
    cuts = [0] + [points[i] for i in order] + [len(context)]
    pieces = [context[a:b] for a, b in zip(cuts, cuts[1:])]
    text = pieces[0].rstrip()
    spans: list[tuple[int, int]] = [(0, 0)] * len(needles)
    for k, i in enumerate(order):
        text += " " if text else ""
        spans[i] = (len(text), len(text) + len(needles[i][0]))
        text += needles[i][0]
        after = pieces[k + 1].lstrip() if k + 1 == len(order) else pieces[k + 1].strip()
        text += " " + after if after else ""
    return text, spans


def render_prompt(tokenizer, context: str, question: str) -> tuple[str, int]:
    """Full prompt text and the character offset where ``context`` starts in it.

    Uses the tokenizer's chat template when it has one, else the paper's ``Question: ...\\nAnswer:`` form.
    """
    user = DOC_OPEN + context + DOC_CLOSE.format(question=question)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    else:
        text = (tokenizer.bos_token or "") + user + PLAIN_TAIL
    return text, text.index(DOC_OPEN) + len(DOC_OPEN)


def build_prompt(tokenizer, context: str, needle: Needle, depth_percent: float) -> Prompt:
    """Insert the needle, render the prompt, tokenise it and locate the needle's token span.

    A ``MultiNeedle`` puts its first needle at ``depth_percent`` and its others at their own depths; the span is
    the first needle's."""
    if isinstance(needle, MultiNeedle) and needle.others:
        with_needle, spans = insert_needles(context, [(needle.needle, depth_percent),
                                                      *zip(needle.others, needle.other_depths)])
        n_start, n_end = spans[0]
    else:
        with_needle, n_start, n_end = insert_needle(context, needle.needle, depth_percent)
    text, offset = render_prompt(tokenizer, with_needle, needle.question)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    span = token_span(enc["offset_mapping"], offset + n_start, offset + n_end)
    if span is None:
        needle_ids = tokenizer(needle.needle, add_special_tokens=False)["input_ids"]
        span = find_needle_span(enc["input_ids"], needle_ids)
    if span is None:
        raise UserError(f"Needle span not found in the prompt for needle '{needle.needle[:40]}...'")
    return Prompt(list(enc["input_ids"]), span, text)


def question_start(tokenizer, prompt: Prompt) -> int:
    """Index of the first token of ``prompt``'s question part: everything before it is the context.

    The context ends with the document's closing line (``DOC_CLOSE``'s first line, chat template's
    system part and document included); the question part is the instruction, the question and the chat
    template's tail. A token that straddles the boundary goes to the question.
    """
    at = prompt.text.rfind(DOCUMENT_END)
    if at < 0:
        raise UserError(f"cannot find the end of the document ({DOCUMENT_END!r}) in the prompt")
    boundary = at + len(DOCUMENT_END)
    enc = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(prompt.ids):
        raise UserError("the prompt does not tokenise back to its own ids; cannot split it at the question")
    split = next((i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > boundary), len(prompt.ids))
    if not 0 < split < len(prompt.ids) - 1:
        raise UserError(f"the prompt's question part is empty (split at token {split} of {len(prompt.ids)})")
    return split


def token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """[start, end) of the tokens overlapping characters [char_start, char_end), or None."""
    hits = [i for i, (s, e) in enumerate(offsets) if e > char_start and s < char_end and e > s]
    return (hits[0], hits[-1] + 1) if hits else None


def find_needle_span(prompt_ids: list[int], needle_ids: list[int], min_overlap: float = 0.9) -> tuple[int, int] | None:
    """The paper's fallback lookup: first window whose token set covers > ``min_overlap`` of the needle's."""
    wanted = set(needle_ids)
    n = len(needle_ids)
    if not wanted:
        return None
    for i in range(len(prompt_ids) - n + 1):
        if len(wanted & set(prompt_ids[i : i + n])) / len(wanted) > min_overlap:
            return i, i + n
    return None
