"""Engine settings: KV-cache size, batching limits and the GPU fast paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from picorl.options import check

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")  # the second compiles much longer
ADAPTER_DTYPES = ("model", "adapter")  # EngineConfig.adapter_dtype


@dataclass
class EngineConfig:
    """How the engine batches and how much memory its KV cache takes.

    The KV cache size is the first of these that is set: ``num_blocks`` (tests), ``kv_cache_gib``,
    ``kv_cache_fraction`` (of the device memory free when the cache is allocated); otherwise half of
    the free GPU memory, or 1 GiB on CPU. A size from free memory stops at what the engine can fill,
    ``max_num_seqs`` sequences of ``max_model_len`` tokens; ``kv_cache_gib`` is taken as given.
    """

    block_size: int = 16  # tokens per KV-cache block
    max_num_seqs: int = 256  # sequences decoded together
    max_num_batched_tokens: int = 8192  # prompt tokens per prefill step (a longer prompt runs alone)
    kv_cache_gib: float | None = None
    kv_cache_fraction: float | None = None
    num_blocks: int | None = None
    dtype: torch.dtype | str | None = None  # KV-cache dtype; None: the model's
    max_model_len: int | None = None  # longest prompt + completion; None: the model's max_position_embeddings
    cuda_graphs: bool | None = (
        None  # decode through CUDA graphs; None: on when on CUDA with the Triton kernel
    )
    cuda_graph_batch_sizes: tuple[int, ...] | None = None  # None: 1, 2, 4, 8, 16, 32, ... up to max_num_seqs
    compile: bool | None = None  # torch.compile the modules between attention calls; None: on for CUDA
    compile_mode: str = "default"  # one of COMPILE_MODES
    # lay each layer's q/k/v (and gate/up) weights out in one buffer, still the trainer's parameters,
    # so one GEMM computes them (``picorl.engine.layers.fused_linear``)
    fuse_projections: bool = True
    # with fuse_projections: a group's LoRA adapters as two GEMMs over stacked copies of their weights,
    # refreshed each generate, instead of two per adapter (``fused_linear.StackedLora``)
    stack_adapters: bool = True
    # the dtype the stacked adapters multiply in: "model" (the base weights', bf16 on a GPU:
    # tensor-core GEMMs, no casts, A folded into the base GEMM; the adapter's contribution is rounded
    # to bf16 before it is added; engine log-probs match PEFT's forward within bf16 rounding, tested
    # on a GPU) or "adapter" (theirs, fp32 as PEFT computes them, about +31% a LoRA decode step)
    adapter_dtype: str = "model"
    # with stack_adapters, where the adapters' dtype is the weights' (adapter_dtype "model", or an
    # fp32 model): copy the stacked A matrices below the group's weights in its buffer, so that one
    # GEMM computes the base outputs and the rank-r projections and only B's GEMM is added
    fold_adapters: bool = True
    run_ahead: bool = True  # launch decode step t+1 before step t's tokens reach the host (step_loop)
    fused_sampling: bool = True  # one-pass Triton sampler on CUDA (without top-k / top-p)
    decode_attention: str = "auto"  # auto (Triton on CUDA when importable, else torch) | triton | torch
    kv_storage: str = "auto"  # auto (CUDA virtual memory when available) | vmm | torch

    def __post_init__(self) -> None:
        check(self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}")
        check(self.max_num_seqs >= 1, f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        check(
            self.max_num_batched_tokens >= 1,
            f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}",
        )
        check(
            self.kv_cache_gib is None or self.kv_cache_gib > 0,
            f"kv_cache_gib must be > 0, got {self.kv_cache_gib}",
        )
        check(
            self.kv_cache_fraction is None or 0 < self.kv_cache_fraction <= 1,
            f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}",
        )
        check(
            self.num_blocks is None or self.num_blocks >= 1, f"num_blocks must be >= 1, got {self.num_blocks}"
        )
        check(
            self.max_model_len is None or self.max_model_len >= 2,
            f"max_model_len must be >= 2, got {self.max_model_len}",
        )
        check(
            self.adapter_dtype in ADAPTER_DTYPES,
            f"adapter_dtype must be adapter|model, got {self.adapter_dtype!r}",
        )
        check(
            self.decode_attention in ("auto", "triton", "torch"),
            f"decode_attention must be auto|triton|torch, got {self.decode_attention!r}",
        )
        check(
            self.compile_mode in COMPILE_MODES,
            f"compile_mode must be {'|'.join(COMPILE_MODES)}, got {self.compile_mode!r}",
        )
        check(
            self.kv_storage in ("auto", "vmm", "torch"),
            f"kv_storage must be auto|vmm|torch, got {self.kv_storage!r}",
        )
        if isinstance(self.dtype, str):
            check(
                self.dtype in DTYPES,
                f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {self.dtype!r}",
            )
            self.dtype = DTYPES[self.dtype]
        if self.cuda_graph_batch_sizes is not None:
            sizes = tuple(sorted(set(self.cuda_graph_batch_sizes)))
            check(bool(sizes) and sizes[0] >= 1, f"cuda_graph_batch_sizes must be positive, got {sizes}")
            self.cuda_graph_batch_sizes = sizes

    def graph_batch_sizes(self) -> tuple[int, ...]:
        """Batch sizes to capture decode graphs at; a batch runs in the smallest one that holds it."""
        if self.cuda_graph_batch_sizes is not None:
            return self.cuda_graph_batch_sizes
        sizes = [1, 2, 4, 8] + list(range(16, self.max_num_seqs + 1, 16))
        return tuple(sorted({s for s in sizes if s < self.max_num_seqs} | {self.max_num_seqs}))
