"""How decode steps run on the device: eagerly, or as fixed-shape steps replayed from CUDA graphs."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from ..errors import ConfigError

MODES = ("auto", "eager", "static", "graphs")


@dataclass(frozen=True)
class RuntimeConfig:
    """Execution settings, separate from SWIFT's algorithm settings (`SwiftConfig`).

    mode: "auto" = "graphs" on CUDA, "eager" elsewhere. "eager" = one Python-driven forward per
    step, shapes as they come. "static" = the fixed-shape steps of the graph path (persistent
    buffers, padded trees, full-capacity masks) run directly, uncaptured: it runs on any device,
    which is how the graph path's logic is tested on a CPU. "graphs" = "static" with every step
    captured once as a CUDA graph and replayed (CUDA only).
    max_draft_graphs: skip sets whose draft graph is kept (least recently used evicted first).
    tree_buckets: verify sizes (tree nodes, root included) with a graph of their own; a tree is
    padded up to the next one. None = powers of two up to the largest tree the config allows.
    score_buckets: query counts of the search's scoring forward, likewise.
    capacity_step: the KV cache's capacity is rounded up to a multiple of this, so requests of
    similar length reuse one cache and the graphs captured against it.
    memory_margin: fraction of the free device memory a request may plan to use.
    fuse: compile the attention and MLP sublayer functions with TorchInductor, so each graph
    holds fewer, fused kernels (see `skipspec.runtime.fuse`). None = on whenever CUDA graphs are
    (measured on an H100: 1.7x faster steps on SmolLM2-135M, 1.25x on a Llama-2-7B shape; the
    first steps of a model compile for a few seconds). If compiling fails, the runtime warns and
    runs the plain sublayers.
    group_projections: run q/k/v and gate/up of each layer as one GEMV each; their weights are
    moved into one storage per group, in place (see `skipspec.runtime.weights`). None = on
    whenever CUDA graphs are.
    transpose_weights: store weight matrices column-major, the layout cuBLAS streams fastest in a
    GEMV (H100); in place, values unchanged. None = on whenever CUDA graphs are and `linear_kernel`
    is off (the kernel streams nn.Linear's own row-major layout, and leaves the other to cuBLAS).
    eager_tree_attention: run the attention of multi-token steps (verify trees, scoring) with
    transformers' "eager" implementation (two matmuls and a softmax) instead of the model's SDPA
    kernel; one-token steps and the model itself keep theirs. On an H100, cuDNN's SDPA kernel for
    16 queries over a 2.8k-slot cache took 65 us a layer, the eager matmuls 10 us; for one query
    SDPA is the faster. None = on whenever the fused sublayers run.
    decode_kernel: run the attention of one-token steps (plain decoding, drafts) with skipspec's
    own split-KV kernel, which reads only the cache blocks the query sees
    (`skipspec.runtime.decode_attention`; a Triton kernel on CUDA, the plain formula elsewhere)
    instead of the model's SDPA kernel, which reads the whole capacity. None = on with CUDA graphs
    where Triton is installed (it comes with PyTorch's CUDA builds on Linux).
    tree_kernel: run the attention of multi-token steps (verify trees, scoring) with that kernel
    too, instead of `eager_tree_attention`'s matmuls over the whole capacity (which it overrides).
    None = as `decode_kernel`.
    linear_kernel: run the linear layers and the output head of steps of at most 16 tokens (plain
    and draft steps, small trees; not prefill) with skipspec's own matrix-vector kernel
    (`skipspec.runtime.skinny_linear`; Triton on CUDA, `F.linear` elsewhere) instead of cuBLAS,
    where its tiles suit the shape (`linear_kernels.choose`: trees only on matrices 4096 wide and
    more). None = on with CUDA graphs where Triton is installed. Measured on an H200, plain steps:
    Llama-2-7B shape 4.38 -> 4.10 ms; SmolLM2-135M, Qwen2.5-0.5B and 1.5B, Gemma-3-270M shapes
    11-24% less time at context 512 (`docs/benchmarks.md`).
    cpu_packed_linear: on the CPU in mode "eager", run the linear layers of multi-token forwards
    (verify trees, scoring, prefill) and the output head with oneDNN on weights packed once into
    its blocked layout; the layers of one-token forwards keep `F.linear`
    (`skipspec.runtime.cpu_linear`). The model itself is left as it is; the packed copies take
    about the model's size again in memory. None = on for float32 models on a CPU whose PyTorch
    has oneDNN (unless `torch.backends.mkldnn.enabled` is off). Measured with 2 threads: a
    SmolLM2-135M forward of 2..64 tokens takes 0.5-0.75x the time, one token 0.9x, so a verify of
    8 tokens costs 0.8-1.1 plain steps instead of 1.35-1.55; Qwen2.5-1.5B's matrices run 2..64 rows
    at 0.2-0.7x (`scripts/cpu_linear_probe.py`). Off on other devices and dtypes whatever it is set to.
    device_drafting: let methods "ngram", "recycle" and "hybrid" run *drafting steps*, which draft
    their tree on the device inside the captured step (prompt lookup over the token history,
    token recycling through a device copy of the successor table; `runtime.device_drafting`), so
    the next step is launched before the host reads this one and host work overlaps the GPU's.
    "hybrid" runs them while layer skipping has no set that pays. None = on with CUDA graphs;
    "static" mode runs them when set True (how their logic is tested on a CPU); never eager.
    device_lookup: (chains, tokens per chain) of a drafting step's prompt-lookup part.
    device_template: nodes of a drafting step's recycling part (the template's best prefix).
    device_template_alone: let "hybrid" also run drafting steps over its recycling template alone,
    in a smaller bucket than the template with the lookup chains, wherever its `LayoutChoice`
    finds that the chains do not pay for the larger verify. Off by default until a GPU
    measurement shows it faster (it is exact either way, tested).
    """

    mode: str = "auto"
    max_draft_graphs: int = 8
    tree_buckets: tuple[int, ...] | None = None
    score_buckets: tuple[int, ...] = (16, 32, 64, 128)
    capacity_step: int = 256
    memory_margin: float = 0.9
    fuse: bool | None = None
    group_projections: bool | None = None
    transpose_weights: bool | None = None
    eager_tree_attention: bool | None = None
    decode_kernel: bool | None = None
    tree_kernel: bool | None = None
    linear_kernel: bool | None = None
    cpu_packed_linear: bool | None = None
    device_drafting: bool | None = None
    device_lookup: tuple[int, int] = (2, 16)
    device_template: int = 31
    device_template_alone: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"runtime mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.max_draft_graphs, int) or self.max_draft_graphs < 1:
            raise ConfigError(f"max_draft_graphs must be an integer >= 1, got {self.max_draft_graphs!r}")
        for name in ("tree_buckets", "score_buckets"):
            value = getattr(self, name)
            if value is None:
                continue
            sizes = tuple(int(v) for v in value)
            if not sizes or sizes != tuple(sorted(set(sizes))) or sizes[0] < 1:
                raise ConfigError(f"{name} must be increasing positive sizes, got {value!r}")
            object.__setattr__(self, name, sizes)
        if not isinstance(self.capacity_step, int) or self.capacity_step < 1:
            raise ConfigError(f"capacity_step must be an integer >= 1, got {self.capacity_step!r}")
        if not 0.0 < self.memory_margin <= 1.0:
            raise ConfigError(f"memory_margin must be in (0, 1], got {self.memory_margin!r}")
        lookup = self.device_lookup
        if not (isinstance(lookup, tuple) and len(lookup) == 2 and all(_count(v) for v in lookup)):
            raise ConfigError(f"device_lookup must be (chains, tokens per chain), integers >= 0, got {lookup!r}")
        if not _count(self.device_template):
            raise ConfigError(f"device_template must be an integer >= 0, got {self.device_template!r}")

    @staticmethod
    def _resolved(setting: bool | None, default: bool, mode: str) -> bool:
        """An on/off step setting in `mode` (a resolved mode): `default` when unset, never eager."""
        return default if setting is None else bool(setting and mode != "eager")

    def resolved_fuse(self, mode: str) -> bool:
        """Whether compiled sublayers run in `mode` (a resolved mode)."""
        return self._resolved(self.fuse, mode == "graphs", mode)

    def resolved_grouping(self, mode: str) -> bool:
        """Whether the sublayers run grouped projections in `mode`."""
        return self._resolved(self.group_projections, mode == "graphs", mode)

    def resolved_transpose(self, mode: str) -> bool:
        """Whether weights are stored column-major for `mode`."""
        default = mode == "graphs" and not self.resolved_linear_kernel(mode)
        return self._resolved(self.transpose_weights, default, mode)

    def resolved_eager_tree_attention(self, mode: str) -> bool:
        """Whether multi-token steps' attention runs transformers' eager implementation in `mode`."""
        return self._resolved(self.eager_tree_attention, self.resolved_fuse(mode), mode)

    @staticmethod
    def _kernel_default(mode: str) -> bool:
        return mode == "graphs" and importlib.util.find_spec("triton") is not None

    def resolved_decode_kernel(self, mode: str) -> bool:
        """Whether one-token steps' attention runs skipspec's decode kernel in `mode`."""
        return self._resolved(self.decode_kernel, self._kernel_default(mode), mode)

    def resolved_tree_kernel(self, mode: str) -> bool:
        """Whether multi-token steps' attention runs skipspec's decode kernel in `mode`."""
        return self._resolved(self.tree_kernel, self._kernel_default(mode), mode)

    def resolved_linear_kernel(self, mode: str) -> bool:
        """Whether steps' linear layers run skipspec's matrix-vector kernel in `mode`."""
        return self._resolved(self.linear_kernel, self._kernel_default(mode), mode)

    def resolved_device_drafting(self, mode: str) -> bool:
        """Whether drafting steps run in `mode` (a resolved mode)."""
        return self._resolved(self.device_drafting, mode == "graphs", mode)

    def resolved_mode(self, device: torch.device) -> str:
        """The mode that runs on `device`: "auto" decided, "graphs" refused off CUDA."""
        if self.mode == "auto":
            return "graphs" if device.type == "cuda" else "eager"
        if self.mode == "graphs" and device.type != "cuda":
            raise ConfigError(f"runtime mode 'graphs' needs a CUDA device, the model is on {device}")
        return self.mode

    def resolved_cpu_packed_linear(self, mode: str, device: torch.device, dtype: torch.dtype) -> bool:
        """Whether eager steps run packed linears (`skipspec.runtime.cpu_linear`) for a model on
        `device` in `dtype`, in `mode` (a resolved mode)."""
        if mode != "eager" or device.type != "cpu" or dtype != torch.float32 or self.cpu_packed_linear is False:
            return False
        from .cpu_linear import packed_linear_available

        if self.cpu_packed_linear is None and not torch.backends.mkldnn.enabled:
            return False  # the user turned oneDNN off
        return packed_linear_available()


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
