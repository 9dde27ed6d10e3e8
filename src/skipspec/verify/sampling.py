"""Seeded sampling keyed by position: the same seed gives the same tokens for every method.

Every random draw of a request is a uniform number keyed by (seed, position of the token drawn),
computed by a counter-based hash on the device, and turned into a token by inverse CDF. The draw
for a position therefore does not depend on how many tree nodes were verified before it, or how:
plain decoding and every speculative method, whatever the drafter or tree shape, emit the same
tokens for the same seed. It is still an exact draw from the target distribution: the keys of a
request are distinct, so its uniforms are independent, and the drafts that decide which nodes get
verified never see the uniform of the position they are checked at.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
# Thomas Mueller's 32-bit integer hash multiplier; under 2**31, so products stay inside int64.
_MIX = 0x45D9F3B


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash of int64 values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK32
    x = x ^ (x >> 16)
    x = (x * _MIX) & _MASK32
    return x ^ (x >> 16)


def keyed_uniform(seed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1), float64 with 53 random bits, one per position, keyed by `seed`.

    seed: (1,) int64 (any value); positions: (N,) int64 >= 0. Pure integer arithmetic: the same
    values on every device, compiled or not.

    >>> u = keyed_uniform(torch.tensor([7]), torch.arange(4))
    >>> bool(((u >= 0) & (u < 1)).all()), torch.equal(u, keyed_uniform(torch.tensor([7]), torch.arange(4)))
    (True, True)
    >>> bool(u[0] != keyed_uniform(torch.tensor([8]), torch.arange(1))[0])
    True
    """
    lo, hi = seed & _MASK32, (seed >> 32) & _MASK32
    key = _mix32(_mix32(hi) ^ lo)
    pos = positions & _MASK32
    first = _mix32(_mix32(key ^ pos) ^ 0x68E31DA4)
    second = _mix32(first ^ _mix32(pos ^ 0x1B56C4E9))
    bits = (first << 21) | (second >> 11)  # 32 + 21 = 53 bits
    return bits.double() * 2.0**-53


# Left out of compiled step functions: TorchInductor's code generation fails on a float64 scan
# across a real vocabulary (49k entries; a split scan), and PyTorch's own scan captures fine.
@torch.compiler.disable
def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """(N,) token drawn from each row of `probs` (N, vocab) by its uniform: the first token whose
    cumulative probability exceeds u (times the row's total, so rounding in the softmax cannot
    push u past the end). Tokens of probability 0 are never drawn.

    >>> inverse_cdf(torch.tensor([[0.5, 0.0, 0.5]] * 3), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    [0, 2, 2]
    """
    cdf = probs.double().cumsum(dim=-1)
    value = (uniforms * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, value, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)
