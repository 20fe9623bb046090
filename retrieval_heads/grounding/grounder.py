"""The Grounder: which words of an answer were copied from the context, from where, and which were not.

One teacher-forced forward pass per answer: the prompt is prefilled (chunked, its KV cache kept
for the next answer to the same prompt, and shared prefixes reused as in the sweep engine), then
the last prompt token and the answer run through the model together with the probe recording the
top-1 key of every one of those query rows (``AttentionControl(probe_rows=R)``). Row r produces
answer token r, exactly as decoding step r would. The copy signal and the spans come from
``signal`` and ``provenance``; the model's log-probability of each answer token comes with the
same pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..scores import RETRIEVAL_THRESHOLD
from . import signal
from .prompt import AnswerTokens, GroundedPrompt, answer_from_ids, countable
from .provenance import Span, spans

# Token threshold on the weighted share of copying retrieval heads. Chosen on the tuning split
# (questions g00-g23, 144 teacher-forced answers) of benchmarks/data/grounding_facts.jsonl with
# SmolLM2-135M-Instruct and its detected heads (benchmarks/grounding_eval.py): the value in
# 0.05, 0.10, ..., 0.95 with the best AUROC of item grounding (true vs fabricated and wrongly
# extracted answers), ties to the smaller: 0.05 (AUROC 0.846; 0.10: 0.839, 0.20: 0.794), i.e. one
# copying retrieval head of weight >= 5% of the total suffices.
DEFAULT_THRESHOLD = 0.05
DEFAULT_MAX_NEW_TOKENS = 32  # greedy answers, as the direct task suites


@dataclass(frozen=True)
class TokenGrounding:
    """One answer token: its characters in the answer, whether it counts and is grounded, and its source.

    ``share``/``question_share``: weighted share of the selected heads copying it from the
    context / the question. ``source``: [start, end) characters in the context, or None.
    ``all_heads``: unweighted share of every head copying it from the context.
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
        grounding: share of counted tokens grounded in the context, in [0, 1]; None when no token counts.
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
        from ..engine import Engine
        from ..hooks import AttentionControl
        from ..tasks import AnswerStop

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
        self.matcher = signal.TokenMatcher(tokenizer)
        self._cache, self._cached_prompt = None, None

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

    def _prefilled(self, prompt_ids: list[int], room: int):
        """KV cache holding ``prompt_ids[:-1]``: kept from the last call for the same prompt, else prefilled."""
        from ..engine import truncate_cache

        if self._cache is not None and self._cached_prompt == prompt_ids:
            truncate_cache(self._cache, len(prompt_ids) - 1)
            return self._cache
        self._cache = self.engine.prefill(prompt_ids[:-1], room=room)
        self._cached_prompt = list(prompt_ids)
        return self._cache

    @torch.no_grad()
    def forward(self, prompt_ids: list[int], answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass: ((R, L, H) absolute top-1 keys, (R,) log-probabilities) of the R answer tokens."""
        from ..hooks import attention_control

        if len(prompt_ids) < 2:
            raise UserError("a prompt needs at least two tokens")
        if not answer_ids:
            raise UserError("the answer is empty")
        tail = [prompt_ids[-1], *answer_ids[:-1]]  # row r is the query producing answer token r
        device = next(self.model.parameters()).device
        with attention_control(self.model, self.control):
            cache = self._prefilled(prompt_ids, room=len(tail))
            self.control.probe, self.control.probe_rows, self.control.decoding = True, len(tail), False
            try:
                logits = self.model(input_ids=torch.tensor([tail], device=device), cache=cache, use_cache=True,
                                    logits_to_keep=len(tail)).logits[0]  # (R, V)
                offsets = self.control.take_top1(self.num_layers, self.num_heads)[:, 0]  # (L, H, R) or (L, H)
            finally:
                self.control.probe, self.control.probe_rows, self.control.decoding = False, 1, None
        if offsets.dim() == 2:
            offsets = offsets.unsqueeze(-1)
        keys = signal.absolute_keys(offsets.cpu(), len(prompt_ids) - 1 + len(tail))
        logprobs = torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(tail)), torch.tensor(answer_ids)]
        return keys, logprobs.cpu()

    @torch.no_grad()
    def answer(self, prompt: GroundedPrompt, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> AnswerTokens:
        """The model's greedy answer (stopping at the end of its first line of text, as the task suites)."""
        from ..hooks import attention_control

        with attention_control(self.model, self.control):
            cache = self._prefilled(prompt.ids, room=max_new_tokens + 1)
            self.stop.reset()
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
        """Turn one pass's (R, L, H) top-1 keys and (R,) log-probabilities into a Grounding."""
        holds = self.matcher.matrix(answer.ids, prompt.ids)  # (R, P)
        from_context = signal.copy_events(keys, holds, prompt.context_tokens)
        from_question = signal.copy_events(keys, holds, prompt.question_tokens)
        share = signal.weighted_share(from_context, self.weights)
        q_share = signal.weighted_share(from_question, self.weights)
        all_heads = signal.copy_rate(from_context, self.applicable)
        grounded = share >= self.threshold
        sources = signal.token_sources(from_context & grounded.view(-1, 1, 1), keys, self.weights)
        counted = torch.tensor([countable(answer.token_text(i)) for i in range(len(answer.ids))])
        tokens = [
            TokenGrounding(answer.token_text(i), *answer.offsets[i], bool(counted[i]), bool(grounded[i]),
                           float(share[i]), float(q_share[i]), float(all_heads[i]),
                           prompt.context_range(int(sources[i])) if grounded[i] else None, float(logprobs[i]))
            for i in range(len(answer.ids))
        ]
        restated = (q_share >= self.threshold) & ~grounded
        return Grounding(
            answer, tokens, [s for s in spans(prompt, answer, grounded.tolist(), sources.tolist())
                             if s.answer_end > s.answer_start],
            signal.grounding_share(grounded, counted), signal.grounding_share(restated, counted),
            float(logprobs.mean()), _mean(all_heads, counted),
        )


def _mean(values: torch.Tensor, counted: torch.Tensor) -> float | None:
    return float(values[counted].mean()) if bool(counted.any()) else None
