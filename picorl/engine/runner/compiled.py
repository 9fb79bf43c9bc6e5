"""torch.compile of the module calls between two attention calls, so their small kernels fuse.

Eagerly, a Qwen3 decoder layer launches ~60 kernels besides its matrix products (fp32 RMSNorm,
q/k norms, rotary, residual adds): ~7 ms of a 23 ms decode step at batch 256 on an H100, even inside
a CUDA graph. Compiled, each norm (with the residual add before it) and the rotary become one kernel.

What is compiled is a plain function of a decoder layer *module* (``model_runner.pre_attention`` /
``post_attention``): the model's own modules and parameters are read at every call, PEFT LoRA layers
run unmerged, and optimizer steps show at once; nothing is copied or fused ahead of time. One
compiled graph serves every layer (parameters are graph inputs, guards check module structure, not
identity). The token dimension is marked dynamic, so prefill and every CUDA-graph batch size share
that graph (batch 1 gets its own, as torch.compile specializes size 1). Paged attention and the KV
write stay outside, uncompiled. ``emulate_precision_casts`` keeps the bf16 roundings the eager
modules make, so logits stay as close as possible to what the trainer computes.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

import torch

from picorl.engine.runner.model_runner import (
    LayerSteps,
    ModelRunner,
    final_logits,
    post_attention,
    pre_attention,
)

# Each architecture x dtype x adapter state x {batch 1, any batch} is one entry per compiled
# function; torch's default of 8 would silently fall back to eager after a few model variants.
RECOMPILE_LIMIT = 64


def compiled_steps(mode: str = "default") -> LayerSteps:
    """``LayerSteps`` whose functions are compiled (lazily, at their first call) with ``mode`` (one of
    ``config.COMPILE_MODES``, checked by ``EngineConfig``)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    options = {} if mode == "default" else dict(torch._inductor.list_mode_options(mode))
    if hasattr(torch._inductor.config, "emulate_precision_casts"):
        options["emulate_precision_casts"] = True
    return LayerSteps(
        _token_dynamic(torch.compile(pre_attention, fullgraph=True, options=options)),
        _token_dynamic(torch.compile(post_attention, fullgraph=True, options=options)),
        _token_dynamic(torch.compile(final_logits, fullgraph=True, options=options)),
    )


def _token_dynamic(compiled: Callable) -> Callable:
    """Mark dim 0 (tokens) of every tensor argument dynamic, so one graph serves every length."""

    def call(*args):
        for a in args:
            if isinstance(a, torch.Tensor):
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args)

    return call


def precompile(runner: ModelRunner, num_tokens: int) -> float:
    """Compile the runner's steps now, on its first layer; returns the seconds it took.

    ``num_tokens`` (e.g. the largest decode batch) is the size the any-length graph is tuned at
    (kernel configurations are benchmarked at the first call); 1 token gets its own graph. Raises
    whatever torch.compile raises, so a caller can fall back to the eager modules.
    """
    steps, lm, fusion = runner.steps, runner.spec.lm, runner.fusion[0]
    model = lm.model
    layer = model.layers[0]
    attn = layer.self_attn
    param = next(lm.parameters())
    start = perf_counter()
    for n in (max(num_tokens, 2), 1):
        hidden = torch.randn(n, lm.config.hidden_size, dtype=param.dtype, device=param.device)
        cos, sin = model.rotary_emb(hidden, torch.arange(n, device=param.device)[None])
        q, _, _ = steps.pre_attention(layer, hidden, cos[0, :, None, :], sin[0, :, None, :], fusion.qkv)
        out = torch.zeros(n, q.shape[1], attn.head_dim, dtype=q.dtype, device=q.device)
        steps.post_attention(layer, hidden, out, fusion.gate_up, fusion.o, fusion.down)
        steps.final_logits(model.norm, lm.lm_head, hidden)
    if param.device.type == "cuda":
        torch.cuda.synchronize(param.device)
    return perf_counter() - start
