"""Logits processing and the target model's choice at every tree node.

Terms used across skipspec:
- *target token* of a node: what the full model emits after that node's prefix. Greedy: the
  argmax. Sampling: one draw from the processed target distribution p (temperature, then top-k,
  then top-p, the order transformers applies them in).
- A drafted candidate is *accepted* when it equals the target token of its parent; the target
  token of the deepest accepted node is the *bonus* token.

Why one draw per node is the lossless rule: the drafter proposes deterministic candidates (the
top-k of its own distribution), so each candidate's proposal distribution is a point mass.
Recursive rejection with point masses accepts candidate x_i with probability
p_i(x_i) / 1 and on rejection continues with the residual norm(max(p_i - delta_{x_i}, 0)), which is
p with x_i removed and renormalised. Running that over siblings x_1..x_m and then drawing the
final token from the last residual outputs x with probability exactly p(x) - which is the same as
drawing y ~ p once and accepting the sibling equal to y (or emitting y as the bonus when no sibling
matches). The single draw needs no per-sibling loop and no host synchronisation, and it holds for
any tree: each node's draw is its own. Draws are keyed by position (`verify.sampling`), so the
same seed gives the same tokens whatever was drafted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingParams
from .sampling import inverse_cdf, keyed_uniform


@dataclass(frozen=True)
class SamplingProgram:
    """What processing logits computes, as opposed to the values it computes with.

    The values (temperature, top-k, top-p) are device tensors (`SamplingInputs`), so one captured
    step serves every value of its program. The program decides only which work runs at all:
    greedy or a draw, and whether the filters run. Top-k and top-p share one full-vocabulary sort
    of every row, most of their cost, so one program runs both, a filter the request does not ask
    for at its off value (top-k 0, top-p 1), where it removes nothing: a program saves work and
    never changes a result. A program per filter would save a softmax and a scan (or a gather and
    a compare) a row, and double the sampling captures and compiles of a warm-up of every
    program (the server's).
    """

    sample: bool = False
    filtered: bool = False


GREEDY = SamplingProgram()
#: Every program a request can need: greedy, sampling, sampling with top-k and top-p filtering.
SAMPLING_PROGRAMS: tuple[SamplingProgram, ...] = (
    GREEDY,
    SamplingProgram(sample=True),
    SamplingProgram(sample=True, filtered=True),
)


def sampling_program(params: SamplingParams) -> SamplingProgram:
    """The program `params` run (a captured step's key: the values and the seed are its inputs).

    >>> sampling_program(SamplingParams(do_sample=True, temperature=0.3, top_p=0.9))
    SamplingProgram(sample=True, filtered=True)
    >>> sampling_program(SamplingParams(do_sample=True, temperature=0.3))
    SamplingProgram(sample=True, filtered=False)
    >>> sampling_program(SamplingParams(temperature=0.3, top_k=5)) == GREEDY
    True
    """
    if not params.do_sample:
        return GREEDY
    return SamplingProgram(sample=True, filtered=params.top_k > 0 or params.top_p < 1.0)


@dataclass(frozen=True)
class SamplingInputs:
    """A request's sampling values on the device, as the steps read them (shapes (1,)).

    seed:        int64, keys every draw (`verify.sampling`)
    temperature: float32
    top_k:       int64, 0: off
    top_p:       float32, 1: off
    """

    seed: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor

    @classmethod
    def allocate(cls, device) -> SamplingInputs:
        # Off values, so a step run before any request has staged its own (a capture's warm-up
        # run) processes logits harmlessly whatever its program.
        long = dict(dtype=torch.long, device=device)
        one = dict(dtype=torch.float32, device=device)
        return cls(torch.zeros(1, **long), torch.ones(1, **one), torch.zeros(1, **long), torch.ones(1, **one))

    @classmethod
    def of(cls, params: SamplingParams, device, seed: int = 0) -> SamplingInputs:
        inputs = cls.allocate(device)
        inputs.write(params, seed)
        return inputs

    def write(self, params: SamplingParams, seed: int) -> None:
        """Stage a request's values: device fills from host scalars, no copy for the host to wait on."""
        self.seed.fill_(seed)
        self.temperature.fill_(params.temperature)
        self.top_k.fill_(params.top_k)
        self.top_p.fill_(params.top_p)


def process_logits(logits: torch.Tensor, program: SamplingProgram, values: SamplingInputs) -> torch.Tensor:
    """Apply temperature, top-k and top-p to `(..., vocab)` float logits; removed tokens get -inf.

    The greedy program returns `logits` itself. Top-k keeps every token tied with the k-th
    largest; top-p then keeps the smallest prefix of the remaining tokens, most likely first
    (ties: lower id first), whose mass reaches top_p, and always the top token. One
    implementation for every executor, compiled or not, and the drafters: the same values give
    the same processed logits on every path.
    """
    if not program.sample:
        return logits
    out = logits / values.temperature
    if not program.filtered:
        return out
    # One sort serves both filters; stable, so which of tied tokens top-p keeps is fixed.
    ordered, order = out.sort(dim=-1, descending=True, stable=True)
    vocab = out.shape[-1]
    k = torch.where(values.top_k > 0, values.top_k, vocab).clamp(max=vocab)
    cut = ordered < ordered.index_select(-1, k - 1)  # k is a tensor: the k-th value by index, no topk(k)
    probs = ordered.masked_fill(cut, float("-inf")).softmax(dim=-1)
    # Drop a token when the mass before it already reaches top_p.
    beyond = (probs.cumsum(dim=-1) - probs) >= values.top_p
    beyond[..., 0] = False
    drop = cut | (beyond & (values.top_p < 1.0))
    return out.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def target_tokens(
    logits: torch.Tensor, program: SamplingProgram, values: SamplingInputs, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The full model's choice at each row of `(N, vocab)` logits: argmax, or one draw each.

    Sampling draws row i by inverse CDF with the uniform keyed by (`values.seed`, `positions[i]`),
    the position in the sequence of the token being drawn (see `verify.sampling`): no generator
    state, no host round trip.
    """
    processed = process_logits(logits, program, values)
    if not program.sample:
        return processed.argmax(dim=-1)
    return inverse_cdf(processed.softmax(dim=-1), keyed_uniform(values.seed, positions))
