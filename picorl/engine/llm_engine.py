"""The built-in rollout engine: paged KV cache, continuous batching, the trainer's own weights.

It runs in the trainer's process on the trainer's modules (see :mod:`picorl.engine.runner.model_runner`),
so there is nothing to synchronize after an optimizer step, no parameter names to match (footgun 2
in the README's table) and no weights to serialize to another process (footgun 7).
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from time import perf_counter

import torch
from torch import nn

from picorl.engine.config import EngineConfig
from picorl.engine.layers.attention import decode_attention_backend, paged_decode_attention_torch
from picorl.engine.layers.sampler import make_sampler
from picorl.engine.memory.kv_cache import KVCache, KVStorage, block_bytes, kv_budget_bytes, make_kv_storage
from picorl.engine.runner.architecture import inspect_model, weights_signature
from picorl.engine.runner.compiled import compiled_steps, precompile
from picorl.engine.runner.cuda_graphs import DecodeGraphs
from picorl.engine.runner.decode_inputs import DecodeInputBuilder
from picorl.engine.runner.model_runner import LayerSteps, ModelRunner
from picorl.engine.scheduling.block_manager import BlockManager
from picorl.engine.scheduling.prompts import check_prompts
from picorl.engine.scheduling.scheduler import Batch, Scheduler
from picorl.engine.scheduling.sequence import Sequence
from picorl.engine.scheduling.step_loop import run_to_completion
from picorl.engine.scheduling.stopping import StopChecker
from picorl.engine.types import Completion, SamplingParams, eos_token_ids
from picorl.units import GIB


class LLMEngine:
    """A :class:`~picorl.engine.types.RolloutEngine` over a Llama / Qwen2 / Qwen3 causal LM.

    ``model`` may be PEFT-wrapped; ``tokenizer`` (optional) decodes completions and stop strings.
    The KV cache is allocated at the first ``generate`` / ``wake_up``, sized by ``config``.
    ``generate`` while asleep wakes the engine first. ``last_stats`` describes the last call,
    ``setup_stats`` the one-time costs (``compile_s``: torch.compile; ``graph_capture_s``).
    """

    def __init__(self, model: nn.Module, tokenizer=None, config: EngineConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.spec = inspect_model(model)
        self.kv_dtype = self.config.dtype or self.spec.dtype
        self.use_compile = self._resolve_compile()
        self.runner = ModelRunner(
            self.spec,
            decode_attention_backend(self.config.decode_attention, self.spec.device),
            compiled_steps(self.config.compile_mode) if self.use_compile else None,
            fuse_projections=self.config.fuse_projections,
            stack_adapters=self.config.stack_adapters,
            adapter_dtype=self.config.adapter_dtype,
            fold_adapters=self.config.fold_adapters,
        )
        self.use_cuda_graphs = self._resolve_cuda_graphs()
        self.builder: DecodeInputBuilder | None = None
        self.storage: KVStorage | None = None
        self.kv: KVCache | None = None
        self.num_blocks = 0
        self.sleeping = False
        self.graphs: DecodeGraphs | None = None
        self.graphs_signature: tuple | None = None
        self.last_stats: dict[str, float] = {}
        self.setup_stats: dict[str, float] = {}

    # --- the RolloutEngine interface -------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, n: int = 1
    ) -> list[list[Completion]]:
        """``n`` completions for each prompt (token ids), sampled as ``params`` says.

        The n samples of a prompt share its prefill. With a seed, a call is reproducible for the same
        prompts, parameters and engine config.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        self.wake_up()
        check_prompts(
            prompts,
            params,
            self.spec.vocab_size,
            self.num_blocks,
            self.config.block_size,
            self.config.max_model_len,
        )
        start = perf_counter()
        stop = StopChecker(params, eos_token_ids(self.spec.lm, self.tokenizer), self.tokenizer)
        sampler = make_sampler(params, self.spec.device, self.config.fused_sampling)
        scheduler = Scheduler(
            BlockManager(self.num_blocks, self.config.block_size),
            self.config.max_num_seqs,
            self.config.max_num_batched_tokens,
        )
        for i, prompt in enumerate(prompts):
            scheduler.add(Sequence(list(prompt), len(prompt), i, list(range(n))))
        self.runner.refresh_fusion()  # outside inference mode: it may re-home trainable weights
        with _eval_inference(self.model):
            self._ensure_compiled()
            self._ensure_graphs()
            self.builder.reset()
            done, step_stats = run_to_completion(scheduler, stop, sampler, self._run, self.config.run_ahead)
        seconds = perf_counter() - start
        tokens = sum(s.num_completion_tokens for s in done)
        self.last_stats = {
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            **step_stats,
            "preemptions": scheduler.num_preemptions,
        }
        done.sort(key=lambda s: (s.prompt_index, s.sample_index))
        completions = [
            Completion(
                s.completion_ids, s.logprobs, s.finish_reason, stop.decode(s.completion_ids), s.stop_reason
            )
            for s in done
        ]
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def sleep(self) -> None:
        """Free the KV cache (and, unless its storage keeps addresses, the CUDA graphs) for training."""
        if self.kv is None or self.sleeping:
            return
        if not self.storage.keeps_address:
            self.graphs = None
        self.kv = None
        self.storage.release()
        self.sleeping = True

    def wake_up(self) -> None:
        """Bring the KV cache back (allocating it the first time); a no-op when awake."""
        if self.storage is None:
            self._allocate()
        elif self.sleeping:
            self.kv = self._views(self.storage.restore())
            self.sleeping = False

    # --- memory ----------------------------------------------------------------------------------

    def fit_kv_cache(self, training_peak_bytes: int) -> int | None:
        """Once the first training step has shown its peak, give the KV cache ``kv_cache_fraction`` of
        the GPU memory training leaves: free memory now, less what training transiently needs on top
        of what it keeps (so the next training step can never run out because of the cache). Call it
        after the step, with the cache asleep. Returns the new size in bytes, or None when the size
        stays (not on a GPU, or fixed by ``kv_cache_gib`` / ``num_blocks``)."""
        device, cfg = self.spec.device, self.config
        if device.type != "cuda" or cfg.kv_cache_gib is not None or cfg.num_blocks is not None:
            return None
        transient = max(0, training_peak_bytes - torch.cuda.memory_allocated(device))
        budget = kv_budget_bytes(device, kv_cache_fraction=cfg.kv_cache_fraction, reserve_bytes=transient)
        self.resize_kv_cache(self._blocks_from_free_memory(budget))
        return self.kv_cache_bytes

    def resize_kv_cache(self, num_blocks: int) -> None:
        """Free the KV cache and allocate ``num_blocks`` blocks at the next use."""
        self.config = dataclasses.replace(self.config, num_blocks=num_blocks)
        self.num_blocks = num_blocks
        self.graphs = None
        self.kv = None
        if self.storage is not None:
            self.storage.close()
        self.storage = None
        self.sleeping = False

    @property
    def block_bytes(self) -> int:
        """Bytes of K and V for one block across all layers."""
        spec = self.spec
        return block_bytes(
            spec.num_layers, self.config.block_size, spec.num_kv_heads, spec.head_dim, self.kv_dtype
        )

    @property
    def kv_cache_bytes(self) -> int:
        return self.block_bytes * (self.num_blocks + 1)  # + the null block

    def _allocate(self) -> None:
        spec, cfg = self.spec, self.config
        if cfg.num_blocks is not None:
            self.num_blocks = cfg.num_blocks
        elif cfg.kv_cache_gib is not None:
            self.num_blocks = self._blocks_within(kv_budget_bytes(spec.device, cfg.kv_cache_gib))
        else:
            budget = kv_budget_bytes(spec.device, kv_cache_fraction=cfg.kv_cache_fraction)
            self.num_blocks = self._blocks_from_free_memory(budget)
        self.storage = make_kv_storage(cfg.kv_storage, spec.device)
        self.kv = self._views(self.storage.allocate(self.kv_cache_bytes))
        self.sleeping = False
        max_len = min(self._longest_sequence, self.num_blocks * cfg.block_size)
        self.max_blocks = -(-max_len // cfg.block_size)  # the widest block table a sequence can need
        self.builder = DecodeInputBuilder(cfg.block_size, self.num_blocks, spec.device)

    @property
    def _longest_sequence(self) -> int:
        """Prompt + completion tokens the engine admits for one sequence."""
        return self.config.max_model_len or self.spec.max_position_embeddings

    def _usable_blocks(self) -> int:
        """The most blocks the engine can ever fill: ``max_num_seqs`` sequences of the longest length
        it admits."""
        cfg = self.config
        return cfg.max_num_seqs * -(-self._longest_sequence // cfg.block_size)

    def _blocks_from_free_memory(self, budget: int) -> int:
        """The blocks a budget taken from free memory buys, stopping at what the engine can fill: on a
        GPU with room to spare (SmolLM2 on an H200: 68 GiB for 0.5 GiB of use) every wake maps, and
        every sleep frees, the whole cache, ~0.1 s an RL update for nothing."""
        return min(self._blocks_within(budget), self._usable_blocks())

    def _blocks_within(self, budget: int) -> int:
        """KV blocks a budget of ``budget`` bytes holds (one block is the null block)."""
        num_blocks = budget // self.block_bytes - 1
        if num_blocks < 1:
            raise ValueError(
                f"a KV-cache budget of {budget / GIB:.3f} GiB holds no block of {self.block_bytes} bytes; "
                "raise kv_cache_gib / kv_cache_fraction or free device memory"
            )
        return num_blocks

    def _views(self, buffer: torch.Tensor) -> KVCache:
        spec = self.spec
        return KVCache(
            buffer,
            spec.num_layers,
            self.num_blocks,
            self.config.block_size,
            spec.num_kv_heads,
            spec.head_dim,
            self.kv_dtype,
        )

    # --- running -----------------------------------------------------------------------------------

    def _run(self, batch: Batch, decoded: torch.Tensor | None) -> torch.Tensor:
        if batch.is_prefill:
            logits = self.runner.prefill(batch.seqs, self.kv)
            self.kv.copy_blocks(batch.block_copies)
            return logits
        inputs = self.builder.build(batch.seqs, decoded)
        if self.graphs is not None and self.graphs.fits(inputs):
            return self.graphs.run(inputs)
        return self.runner.decode(inputs, self.kv)

    def _resolve_compile(self) -> bool:
        wanted = self.config.compile
        return self.spec.device.type == "cuda" if wanted is None else wanted

    def _ensure_compiled(self) -> None:
        """Compile the layer steps now (timed) rather than inside the first graph capture."""
        if not self.use_compile or "compile_s" in self.setup_stats:
            return
        try:
            self.setup_stats["compile_s"] = precompile(self.runner, self.config.max_num_seqs)
        except Exception as e:  # any compiler failure: the eager modules compute the same
            self._disable_compile(e)

    def _disable_compile(self, error: Exception) -> None:
        warnings.warn(
            f"torch.compile of the decoder layers failed, running them eagerly: {error}", stacklevel=4
        )
        self.use_compile = False
        self.runner.steps = LayerSteps()

    def _resolve_cuda_graphs(self) -> bool:
        wanted = self.config.cuda_graphs
        on_cuda = self.spec.device.type == "cuda"
        if wanted and not on_cuda:
            raise ValueError(f"cuda_graphs=True needs a CUDA device; the model is on {self.spec.device}")
        if wanted is None:  # the torch decode attention reads max_model_len keys per row inside a graph
            return on_cuda and self.runner.decode_attention is not paged_decode_attention_torch
        return wanted

    def _ensure_graphs(self) -> None:
        if not self.use_cuda_graphs:
            return
        signature = (self.kv.data_ptr, weights_signature(self.spec.lm), self.runner.fusion_signature())
        if self.graphs is not None and signature == self.graphs_signature:
            return
        self.graphs = None
        sizes = tuple(s for s in self.config.graph_batch_sizes() if s <= self.config.max_num_seqs) or (1,)
        graphs = DecodeGraphs(self.runner, self.kv, sizes, self.max_blocks)
        start = perf_counter()
        try:
            graphs.capture()
        except Exception as e:
            if not self.use_compile:  # e.g. a rotary variant that syncs with the host: run eagerly
                warnings.warn(f"CUDA-graph capture failed, decoding eagerly: {e}", stacklevel=3)
                self.use_cuda_graphs = False
                return
            self._disable_compile(e)  # a recompile for new adapters, say: capture the eager modules
            graphs = DecodeGraphs(self.runner, self.kv, sizes, self.max_blocks)
            graphs.capture()
        self.setup_stats["graph_capture_s"] = perf_counter() - start
        self.graphs, self.graphs_signature = graphs, signature


@contextmanager
def _eval_inference(model: nn.Module):
    """Eval mode and inference mode for generation; every module's training flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in flags:
            module.training = training
