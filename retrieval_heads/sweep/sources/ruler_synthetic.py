"""RULER's synthetic tasks with no needle: variable tracking (vt), common words (cwe), frequent words (fwe).

Written from the published task definitions (Hsieh et al. 2024, arXiv 2404.06654; RULER's ``synthetic.yaml``),
no RULER code. Each is a ``sweep.contexts.ContextTask``: per sample a question and the values expected (drawn
once, the same at every length), and a context built at a size that the sweep grows to fill the prompt.
Contexts are seeded by the set's seed, the sample and the size, so the same name gives the same bytes.

- ``vt``: one chain of 4 hops, ``VAR ABCDE = 12345`` then ``VAR FGHIJ = VAR ABCDE `` (5-letter upper-case
  names, a 5-digit value), each line put among lines of RULER's noise; the answer is every name of the chain.
  Size: noise lines. The chain's lines keep their places as fractions of the noise, whatever the length.
- ``cwe``: a numbered list ``1. word 2. word ...`` in which 10 common words appear 30 times and the others 3
  (6 and 1 below 4,096 tokens, as RULER does); the answer is the 10 common words. Size: uncommon words,
  drawn from ``words``' adjectives and nouns, then (past those) from ``adjective-noun`` pairs that share no
  part with a common word, where RULER turns to a larger English word list.
- ``fwe``: coded text of random 6-letter words whose counts follow Zipf's law with alpha 2 (word of rank k
  appears int(N k^-2 / zeta(2)) times among a vocabulary of one word per 50 tokens), the top word replaced by
  the noise '...'; the answer is the words of ranks 2 to 4. Size: N, at least 74 so that those three outnumber
  the rest.

The questions are RULER's question lines; RULER's instruction lines and few-shot examples (vt, cwe) are not
in the prompt, which is the project's own (``haystack.render_prompt``).
"""

from __future__ import annotations

import itertools
import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..contexts import SeededTask
from ..haystack import TaskItem
from .haystacks import NOISE
from .words import ADJECTIVES, NOUNS

VERSION = "1"  # part of every set's identity: a change to the contexts built must change it

VT_QUESTION = "Find all variables that are assigned the value {value} in the text above."
VT_HOPS = 4
VT_NAME_LENGTH = 5

CWE_QUESTION = "What are the 10 most common words in the above list?"
CWE_COMMON = 10
CWE_SHORT = 4096  # below this many tokens, RULER repeats the words less (6 and 1 instead of 30 and 3)

FWE_QUESTION = ("Do not provide any explanation. Please ignore the dots '....'. "
                "What are the three most frequently appeared words in the above coded text?")
FWE_ALPHA = 2.0
FWE_ZETA = math.pi ** 2 / 6  # zeta(2)
FWE_WORD_LENGTH = 6
FWE_TOKENS_PER_WORD = 50  # RULER's vocabulary: one coded word per 50 tokens of the prompt
FWE_NOISE = "..."
FWE_MIN_WORDS = 74  # the smallest N at which ranks 2-4 appear more often than rank 5


class _Stream:
    """The first n items of an endless seeded sequence: the same, whatever was asked for before."""

    def __init__(self, items: Iterator[str]):
        self._items, self._drawn = items, []

    def first(self, n: int) -> list[str]:
        self._drawn.extend(itertools.islice(self._items, max(n - len(self._drawn), 0)))
        return self._drawn[:n]


def _seeded(*parts) -> random.Random:
    """A generator seeded by a string of ``parts`` (Python seeds strings through SHA-512: the same everywhere)."""
    return random.Random(":".join(map(str, parts)))


@dataclass
class VtContexts(SeededTask):
    """RULER's ``vt``: chains of variable assignments among noise lines."""


    def __post_init__(self):
        self.name = f"ruler:vt:seed={self.seed}:n={self.count}"
        self.identity = f"{self.name} v{VERSION}\n{NOISE}"
        rng = random.Random(self.seed)
        items, self.chains, self.places = [], [], []
        for _ in range(self.count):
            names: list[str] = []
            while len(names) < VT_HOPS + 1:
                name = "".join(rng.choices(string.ascii_uppercase, k=VT_NAME_LENGTH))
                if name not in names:
                    names.append(name)
            value = str(rng.randrange(10000, 99999))  # RULER's np.random.randint(10000, 99999)
            self.chains.append([f"VAR {names[0]} = {value}"]
                               + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(VT_HOPS)])
            self.places.append(sorted(rng.random() for _ in names))
            items.append(TaskItem("", VT_QUESTION.format(value=value), ", ".join(names), values=tuple(names)))
        self.items = tuple(items)

    def context(self, index: int, size: int, context_length: int) -> str:
        """``size`` noise lines with the chain's lines among them, in order, one a line."""
        lines = [NOISE] * size
        for j, (line, place) in enumerate(zip(self.chains[index], self.places[index])):
            lines.insert(min(int(place * (size + 1)), size) + j, line)
        return "\n".join(lines)


@dataclass
class CweContexts(SeededTask):
    """RULER's ``cwe``: a numbered list of words, 10 of them common."""


    def __post_init__(self):
        self.name = f"ruler:cwe:seed={self.seed}:n={self.count}"
        self.pool = sorted(set(ADJECTIVES) | set(NOUNS))
        self.identity = f"{self.name} v{VERSION}\n" + " ".join(self.pool)
        rng = random.Random(self.seed)
        self.common = [rng.sample(self.pool, CWE_COMMON) for _ in range(self.count)]
        self.items = tuple(TaskItem("", CWE_QUESTION, ", ".join(c), values=tuple(c)) for c in self.common)
        self._uncommon: dict[int, _Stream] = {}

    def uncommon(self, index: int, size: int) -> list[str]:
        """The first ``size`` uncommon words of sample ``index``: the other single words in a seeded order, then
        ``adjective-noun`` pairs with no common word in them."""
        if index not in self._uncommon:
            self._uncommon[index] = _Stream(self._uncommon_words(index))
        return self._uncommon[index].first(size)

    def _uncommon_words(self, index: int) -> Iterator[str]:
        common = set(self.common[index])
        words = [w for w in self.pool if w not in common]
        _seeded("ruler:cwe", self.seed, index, "words").shuffle(words)
        yield from words
        rng, seen = _seeded("ruler:cwe", self.seed, index, "pairs"), set()
        while True:
            adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
            pair = f"{adjective}-{noun}"
            if adjective not in common and noun not in common and pair not in seen:
                seen.add(pair)
                yield pair

    def context(self, index: int, size: int, context_length: int) -> str:
        common_repeats, uncommon_repeats = (6, 1) if context_length < CWE_SHORT else (30, 3)
        words = self.common[index] * common_repeats + self.uncommon(index, size) * uncommon_repeats
        _seeded("ruler:cwe", self.seed, index, size, context_length).shuffle(words)
        return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


@dataclass
class FweContexts(SeededTask):
    """RULER's ``fwe``: coded words with Zipf-distributed counts."""

    min_size: int = field(default=FWE_MIN_WORDS, kw_only=True)

    def __post_init__(self):
        self.name = f"ruler:fwe:seed={self.seed}:n={self.count}"
        self.identity = f"{self.name} v{VERSION}"
        self._vocab: dict[int, _Stream] = {}
        self.items = tuple(TaskItem("", FWE_QUESTION, ", ".join(w), values=tuple(w))
                           for w in (self.vocabulary(i, 4)[1:4] for i in range(self.count)))

    def vocabulary(self, index: int, size: int) -> list[str]:
        """Sample ``index``'s ``size`` words by rank: the noise '...', then distinct random coded words (the same
        first words at every size)."""
        if index not in self._vocab:
            self._vocab[index] = _Stream(self._coded_words(index))
        return [FWE_NOISE] + self._vocab[index].first(size - 1)

    def _coded_words(self, index: int) -> Iterator[str]:
        rng, seen = _seeded("ruler:fwe", self.seed, index, "vocabulary"), set()
        while True:
            word = "".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LENGTH))
            if word not in seen:
                seen.add(word)
                yield word

    def context(self, index: int, size: int, context_length: int) -> str:
        vocabulary = self.vocabulary(index, max(context_length // FWE_TOKENS_PER_WORD, 4))
        words = [w for rank, w in enumerate(vocabulary, start=1)
                 for _ in range(int(size * rank ** -FWE_ALPHA / FWE_ZETA))]
        _seeded("ruler:fwe", self.seed, index, size, context_length).shuffle(words)
        return " ".join(words)


SYNTHETIC = {"vt": VtContexts, "cwe": CweContexts, "fwe": FweContexts}
