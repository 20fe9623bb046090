"""The Grounder: which words of an answer were copied from the context, from where, and which were not.

One teacher-forced forward pass per answer: the prompt is prefilled (chunked, its KV cache kept
for the next answer to the same prompt, and shared prefixes reused as in the sweep engine; models
with recurrent state prefill every time), then the last prompt token and the R answer tokens run
through the model together with the probe recording the top-1 key of every one of those R + 1
query rows (``AttentionControl(probe_rows=R + 1)``). Row r produces answer token r, exactly as
decoding step r would; row R reads the last answer token (what a head attends to there says where
it found that token: ``signal``'s *located* evidence). The evidence, the sources and the spans
come from ``signal`` and ``provenance``; the model's log-probability of each answer token comes
with the same pass.

An answer's ``grounding`` is the share of its counted tokens (those with a letter or digit) that
are grounded, leaving out the tokens that restate the question (copied from the question and not
from the context): repeating what was asked is neither support from the context nor a claim made
up. On the tuning split this lifts true answers given as sentences ("The password is Kelsel.",
whose "password" the heads read in the question) from a mean grounding of 0.89 to 0.96 and
fabricated sentences from 0.55 to 0.58 (true vs fabricated AUROC 0.988 -> 0.998).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.head_scores import RETRIEVAL_THRESHOLD
from ..errors import UserError
from . import signal
from .prompt import AnswerTokens, GroundedPrompt, answer_from_ids, countable
from .provenance import Span, spans

# Token threshold on the weighted share of retrieval heads with evidence. Chosen on the tuning split
# (questions g00-g23: 120 teacher-forced true and fabricated answers) of
# benchmarks/data/grounding_facts.jsonl with SmolLM2-135M-Instruct and its detected heads
# (benchmarks/grounding_eval.py): the value in 0.05, 0.10, ..., 0.95 with the best AUROC of item
# grounding for true vs fabricated answers (wrong extractions are copied, so they are left out), ties
# to the smaller: 0.05 (AUROC 0.998; 0.10: 0.986, 0.20: 0.974), i.e. one head of weight >= 5% of the
# total suffices (all but the lightest of the ten heads, 3.7%).
DEFAULT_THRESHOLD = 0.05
DEFAULT_MAX_NEW_TOKENS = 32  # greedy answers, as the direct task suites


@dataclass(frozen=True)
class TokenGrounding:
    """One answer token: its characters in the answer, whether it counts and is grounded, and its source.

    ``share``/``question_share``: weighted share of the selected heads with evidence (``signal``)
    for it from the context / the question. ``source``: [start, end) characters in the context, or
    None. ``all_heads``: unweighted share of every head with evidence for it from the context.
    """

    text: str
    start: int
    end: int
    counted: bool
    grounded: bool
    share: float
    question_share: float
    all_heads: float
    source: tuple[int, int] | None
    logprob: float

    def to_dict(self) -> dict:
        return {"text": self.text, "start": self.start, "end": self.end, "counted": self.counted,
                "grounded": self.grounded, "source": list(self.source) if self.source else None,
                "share": round(self.share, 4), "question_share": round(self.question_share, 4),
                "all_heads": round(self.all_heads, 4), "logprob": round(self.logprob, 4)}


@dataclass(frozen=True)
class Grounding:
    """A grounded answer.

    Attributes:
        grounding: share of the counted tokens not restating the question that are grounded in the
            context, in [0, 1]; None when no such token.
        restated: share of counted tokens copied from the question instead (not grounded).
        mean_logprob: the model's mean log-probability of the answer tokens.
        all_heads: mean over counted tokens of the share of all heads copying from the context.
    """

    answer: AnswerTokens
    tokens: list[TokenGrounding]
    spans: list[Span]
    grounding: float | None
    restated: float | None
    mean_logprob: float | None
    all_heads: float | None
    extra: dict = field(default_factory=dict)

    def to_record(self) -> dict:
        return {"answer": self.answer.text, "grounding": self.grounding, "restated": self.restated,
                "mean_logprob": self.mean_logprob, "all_heads_copy_rate": self.all_heads,
                "tokens": [t.to_dict() for t in self.tokens], "spans": [s.to_dict() for s in self.spans]}


class Grounder:
    """Grounds answers in their prompt's context with the given head weights.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        weights: (layers, heads) head weights (``signal.head_weights``): the heads' retrieval
            scores where selected, 0 elsewhere.
        threshold: token threshold on the weighted share of copying heads.
        applicable: (layers, heads) bool, heads that exist (for the all-heads baseline).
        chunk_size: prefill chunk in tokens.
    """

    def __init__(self, model, tokenizer, weights: torch.Tensor, *, threshold: float = DEFAULT_THRESHOLD,
                 applicable=None, chunk_size: int = 512):
        from ..core.engine import Engine
        from ..core.hooks import AttentionControl
        from ..tasks.run import AnswerStop

        if not 0 < threshold <= 1:
            raise UserError(f"the grounding threshold must lie in (0, 1], not {threshold}")
        self.model, self.tokenizer = model, tokenizer
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.threshold = threshold
        self.applicable = None if applicable is None else torch.as_tensor(applicable, dtype=torch.bool)
        self.num_layers, self.num_heads = self.weights.shape
        self.control = AttentionControl()
        self.stop = AnswerStop(tokenizer, model, cot=False)
        self.engine = Engine(model, self.control, self.stop, chunk_size=chunk_size, num_heads=self.num_heads)
        self._cache, self._cached_prompt = None, None
        self._words = None  # (prompt, its word spans)
        # model forward calls by phase (prefill chunks, decode steps, teacher-forced passes) since the caller
        # last cleared it: what grounding an answer cost
        self.passes: Counter[str] = Counter()

    @classmethod
    def from_scores(cls, loaded, scores, *, top_k: int | None = None, head_threshold: float = RETRIEVAL_THRESHOLD,
                    **kwargs) -> "Grounder":
        """A Grounder for a ``LoadedModel`` with the retrieval heads of ``scores`` (HeadScores)."""
        shape = (loaded.num_layers, loaded.num_heads)
        if tuple(scores.shape) != shape:
            raise UserError(f"the scores are for {scores.shape[0]} layers x {scores.shape[1]} heads, "
                            f"the model has {shape[0]} x {shape[1]}")
        applicable = loaded.layout.applicable()
        weights = signal.head_weights(scores.mean, threshold=head_threshold, top_k=top_k, applicable=applicable)
        return cls(loaded.model, loaded.tokenizer, weights, applicable=applicable, **kwargs)

    @property
    def heads(self) -> list[tuple[int, int, float]]:
        """The selected heads as (layer, head, weight), heaviest first."""
        idx = self.weights.flatten().argsort(descending=True, stable=True)
        return [(int(i) // self.num_heads, int(i) % self.num_heads, float(self.weights.flatten()[i]))
                for i in idx if self.weights.flatten()[i] > 0]

    # ---- model passes ---------------------------------------------------------------------------

    @contextmanager
    def _counting(self, phase: str):
        """Count the model's forward calls inside the block as ``phase`` in ``passes``."""
        handle = self.model.register_forward_pre_hook(lambda module, args: self.passes.update((phase,)))
        try:
            yield
        finally:
            handle.remove()

    def _prefilled(self, prompt_ids: list[int], room: int):
        """KV cache holding ``prompt_ids[:-1]``: kept from the last call for the same prompt, else prefilled.

        A kept cache is cut back to the prompt, which only key/value layers allow: recurrent state (the
        linear-attention layers of hybrids such as Qwen3-Next) has read the last answer and cannot be cut
        back, so those models prefill again for every pass (``Engine.share_prefix`` says which).
        """
        from ..core.engine import truncate_cache

        if self._cache is not None and self._cached_prompt == prompt_ids and self.engine.share_prefix:
            truncate_cache(self._cache, len(prompt_ids) - 1)
            return self._cache
        with self._counting("prefill"):
            self._cache = self.engine.prefill(prompt_ids[:-1], room=room)
        self._cached_prompt = list(prompt_ids)
        return self._cache

    @torch.no_grad()
    def forward(self, prompt_ids: list[int], answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: ((R + 1, L, H) absolute top-1 keys, (R,) log-probabilities) of the R answer tokens.

        Key row r < R is the query producing answer token r; row R is the query reading the last answer token.
        """
        from ..core.hooks import attention_control

        if len(prompt_ids) < 2:
            raise UserError("a prompt needs at least two tokens")
        if not answer_ids:
            raise UserError("the answer is empty")
        tail = [prompt_ids[-1], *answer_ids]  # row r is the query producing answer token r; row R reads the last
        device = next(self.model.parameters()).device
        with attention_control(self.model, self.control):
            cache = self._prefilled(prompt_ids, room=len(tail))
            self.control.probe, self.control.probe_rows, self.control.decoding = True, len(tail), False
            try:
                with self._counting("teacher_forced"):
                    logits = self.model(input_ids=torch.tensor([tail], device=device), cache=cache, use_cache=True,
                                        logits_to_keep=len(tail)).logits[0]  # (R, V)
                offsets = self.control.take_top1(self.num_layers, self.num_heads)[:, 0]  # (L, H, R) or (L, H)
            finally:
                self.control.probe, self.control.probe_rows, self.control.decoding = False, 1, None
        if offsets.dim() == 2:
            offsets = offsets.unsqueeze(-1)
        keys = signal.absolute_keys(offsets.cpu(), len(prompt_ids) - 1 + len(tail))
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)[torch.arange(len(answer_ids)), torch.tensor(answer_ids)]
        return keys, logprobs.cpu()

    @torch.no_grad()
    def answer(self, prompt: GroundedPrompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> AnswerTokens:
        """The model's greedy answer (stopping at the end of its first line of text, as the task suites)."""
        from ..core.hooks import attention_control

        with attention_control(self.model, self.control):
            cache = self._prefilled(prompt.ids, room=max_new_tokens + 1)
            self.stop.reset()
            with self._counting("decode"):
                generated = self.engine.decode(cache, prompt.ids, max_new_tokens, probe=False).generated_ids
        while generated and (generated[-1] in self.stop.eos or not self.tokenizer.decode([generated[-1]]).strip()):
            generated = generated[:-1]  # the stop token (EOS, a bare newline) is not part of the answer
        return answer_from_ids(self.tokenizer, generated)

    # ---- grounding --------------------------------------------------------------------------------

    def ground(self, prompt: GroundedPrompt, answer: AnswerTokens) -> Grounding:
        """Ground ``answer`` (tokens the model produces right after ``prompt``) in the prompt's context."""
        if not answer.ids:
            return Grounding(answer, [], [], None, None, None, None)
        keys, logprobs = self.forward(prompt.ids, answer.ids)
        return self.interpret(prompt, answer, keys, logprobs)

    def interpret(self, prompt: GroundedPrompt, answer: AnswerTokens, keys: torch.Tensor,
                  logprobs: torch.Tensor) -> Grounding:
        """Turn one pass's (R + 1, L, H) top-1 keys and (R,) log-probabilities into a Grounding."""
        a_spans = signal.word_spans(answer.text, answer.offsets)
        p_spans = self._prompt_words(prompt)
        holds = signal.holds([_text(answer.text, w) for w in a_spans], [_text(prompt.text, w) for w in p_spans])
        index = signal.word_index(a_spans)
        context, positions = signal.evidence(keys, holds, prompt.context_tokens)
        context = signal.pool_words(context, index)
        question = signal.pool_words(signal.evidence(keys, holds, prompt.question_tokens)[0], index)
        share = signal.weighted_share(context, self.weights)
        q_share = signal.weighted_share(question, self.weights)
        all_heads = signal.copy_rate(context, self.applicable)
        grounded = share >= self.threshold
        restated = (q_share >= self.threshold) & ~grounded
        counted = torch.tensor([countable(answer.token_text(i)) for i in range(len(answer.ids))])
        parts = signal.word_parts(answer.offsets, a_spans)
        in_prompt = signal.token_sources(positions, self.weights, grounded.tolist(), answer_text=answer.text,
                                         answer_spans=a_spans, answer_parts=parts, prompt_text=prompt.text,
                                         prompt_spans=p_spans)
        sources = [None if s is None else prompt.in_context(*s) for s in in_prompt]
        tokens = [
            TokenGrounding(answer.token_text(i), *answer.offsets[i], bool(counted[i]), bool(grounded[i]),
                           float(share[i]), float(q_share[i]), float(all_heads[i]), sources[i], float(logprobs[i]))
            for i in range(len(answer.ids))
        ]
        return Grounding(
            answer, tokens, spans(parts, sources, answer.text, prompt.context),
            signal.grounding_share(grounded, counted & ~restated), signal.grounding_share(restated, counted),
            float(logprobs.mean()), _mean(all_heads, counted),
        )

    def _prompt_words(self, prompt: GroundedPrompt) -> list:
        """``signal.word_spans`` of the prompt's tokens, kept for the next answer to the same prompt."""
        if self._words is None or self._words[0] is not prompt:
            self._words = (prompt, signal.word_spans(prompt.text, prompt.offsets))
        return self._words[1]


def _text(text: str, span) -> str | None:
    return None if span is None else text[span[0]:span[1]]


def _mean(values: torch.Tensor, counted: torch.Tensor) -> float | None:
    return float(values[counted].mean()) if bool(counted.any()) else None
