"""Rollout throughput of the picorl engine vs transformers ``generate`` (run on a GPU machine).

    PYTHONPATH=. python benchmarks/engine.py                      # Qwen3-4B shape, random bf16 weights
    PYTHONPATH=. python benchmarks/engine.py --model smollm2-135m # real weights (picorl.models)

Case A: 64 prompts of 120 random tokens, 512 new tokens forced (EOS ignored), temperature 1; engine
and transformers ``generate`` in the same run. Case B: 256 sequences decoding at context ~1024: the
decode step time is the engine's own wall time of its decode steps (each ends waiting for its sampled
tokens, so host work is included) over their number, the median of ``--b-repeats`` runs, set
against the memory-bandwidth bound (weights + KV read once per step at peak bandwidth). The older estimate, (time for N new
tokens - time for 1 new token) / (N - 1), is printed too: it carries the run-to-run noise of the
~3 s prefill of 245k tokens (up to ~2 ms a step).
The last line reads ``engine_vs_generate_ratio=<A> roofline_fraction=<B>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.layers.sampler import make_sampler
from picorl.engine.types import SamplingParams
from picorl.units import GIB

# Qwen3-4B (../shared/gpu.md); speed and memory do not depend on the weights' values.
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
    rope_theta=5e6,
    max_position_embeddings=40960,
)
PEAK_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}


def random_qwen3_4b(
    device: str = "cuda", shape: dict | None = None, dtype: torch.dtype = torch.bfloat16
) -> torch.nn.Module:
    """Qwen3-4B-shaped model (or ``shape``) with random weights of ``dtype``, built on the meta device
    (no 16 GB fp32 init)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**(shape or QWEN3_4B))
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config).to(dtype)
    model = model.to_empty(device=device)
    model.lm_head.weight = model.model.embed_tokens.weight  # to_empty unties shared parameters
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    rotary = model.model.rotary_emb  # its inv_freq buffer came back uninitialized
    model.model.rotary_emb = type(rotary)(config=config).to(device)
    return model.eval()


def load_model(name: str) -> torch.nn.Module:
    if name == "qwen3-4b-random":
        return random_qwen3_4b()
    try:
        from picorl.models import load_model_and_tokenizer
    except ImportError as e:
        raise SystemExit(f"--model {name} needs picorl.models.load_model_and_tokenizer ({e})") from e
    model, _ = load_model_and_tokenizer(name, device="cuda", dtype=torch.bfloat16)
    return model.eval()


def with_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    """``model`` with PEFT LoRA adapters of ``rank`` on every linear layer, unmerged, as training runs
    it (B = 0 at init costs the same as trained values); ``model`` itself for rank 0."""
    if not rank:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    return get_peft_model(model, lora).eval()


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (count, length), generator=gen).tolist()


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def engine_tokens(engine: LLMEngine, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for the engine to generate exactly ``new_tokens`` for every prompt."""
    params = SamplingParams(max_tokens=new_tokens, temperature=1.0, ignore_eos=True, seed=0)
    result: list = []
    seconds = timed(lambda: result.extend(engine.generate(prompts, params)))
    assert all(len(c[0].token_ids) == new_tokens for c in result), "the engine stopped early"
    return seconds


def hf_generate_seconds(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int) -> float:
    """transformers ``generate`` at its usual settings. The length is forced by clearing EOS, not with
    ``min_new_tokens``: that logits processor alone made ``generate`` 2.5x slower on an H100."""
    ids = torch.tensor(prompts, device="cuda")
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )
    config = model.generation_config
    saved_eos, config.eos_token_id = config.eos_token_id, None
    try:
        with torch.inference_mode():
            model.generate(ids[:, :8], **{**kwargs, "max_new_tokens": 4})  # warm-up
            out: list = []
            seconds = timed(lambda: out.append(model.generate(ids, **kwargs)))
    finally:
        config.eos_token_id = saved_eos
    assert out[0].shape[1] == ids.shape[1] + new_tokens, "generate stopped early"
    return seconds


def step_bytes(engine: LLMEngine, cached_tokens: float) -> float:
    """Bytes one decode step must read: every weight once (a tied embedding once, as the LM head)
    plus K and V of every cached token in every layer."""
    weights = sum(p.numel() * p.element_size() for p in engine.spec.lm.parameters())
    spec = engine.spec
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * engine.kv_dtype.itemsize
    return weights + cached_tokens * per_token


def step_breakdown(engine: LLMEngine, batch: int, repeats: int = 20) -> tuple[float, float]:
    """Seconds of one decode-graph replay at ``batch`` (re-running the last step left in its static
    buffers) and of sampling its logits, each timed alone with CUDA events."""
    if engine.graphs is None or batch not in engine.graphs.graphs:
        return float("nan"), float("nan")
    graph, logits = engine.graphs.graphs[batch], engine.graphs.outputs[batch]
    sampler = make_sampler(
        SamplingParams(temperature=1.0, seed=0), logits.device, engine.config.fused_sampling
    )

    def per_call(fn) -> float:
        fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats

    with torch.inference_mode():
        return per_call(graph.replay), per_call(lambda: sampler(logits))


def peak_bandwidth() -> float:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BYTES_PER_S.items():
        if key in name:
            return value
    raise SystemExit(f"no peak bandwidth known for {name}; add it to PEAK_BYTES_PER_S")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="qwen3-4b-random", help="qwen3-4b-random | smollm2-135m")
    parser.add_argument("--kv-cache-fraction", type=float, default=0.8)
    parser.add_argument("--b-prompt-len", type=int, default=960, help="case B prompt length")
    parser.add_argument("--b-new-tokens", type=int, default=128, help="case B tokens per sequence")
    parser.add_argument("--b-repeats", type=int, default=3, help="case B runs; the median is reported")
    parser.add_argument("--skip-generate", action="store_true", help="skip transformers generate")
    parser.add_argument("--no-compile", action="store_true", help="run the decoder layers eagerly")
    parser.add_argument("--no-fused-sampling", action="store_true", help="sample with the torch sampler")
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=0,
        help="wrap the model in PEFT LoRA adapters (all linear layers), unmerged",
    )
    parser.add_argument("--compile-mode", default="default", help="default | max-autotune-no-cudagraphs")
    parser.add_argument(
        "--no-fuse-projections", action="store_true", help="one GEMM per projection (q, k, v, gate, up)"
    )
    parser.add_argument(
        "--no-stack-adapters", action="store_true", help="with --lora-rank: each PEFT layer adds its own adapter"
    )
    parser.add_argument(
        "--adapter-dtype", default="model", help="with --lora-rank: model (bf16, the default) | adapter (fp32, as PEFT)"
    )
    parser.add_argument(
        "--no-fold-adapters", action="store_true", help="stacked A as a GEMM of its own, not in the base one"
    )
    parser.add_argument(
        "--no-run-ahead", action="store_true", help="wait for each step's tokens before the next step"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model)
    model = with_lora(model, args.lora_rank)
    config = EngineConfig(
        max_num_seqs=256,
        max_num_batched_tokens=16384,
        max_model_len=args.b_prompt_len + args.b_new_tokens + 64,
        kv_cache_fraction=args.kv_cache_fraction,
        compile=not args.no_compile,
        compile_mode=args.compile_mode,
        fused_sampling=not args.no_fused_sampling,
        run_ahead=not args.no_run_ahead,
        fuse_projections=not args.no_fuse_projections,
        stack_adapters=not args.no_stack_adapters,
        adapter_dtype=args.adapter_dtype,
        fold_adapters=not args.no_fold_adapters,
    )
    engine = LLMEngine(model, config=config)
    spec = engine.spec
    peak = peak_bandwidth()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, model {args.model}", flush=True)

    setup = timed(lambda: engine_tokens(engine, random_prompts(4, 16, spec.vocab_size, 1), 8))
    stats = engine.setup_stats
    print(
        f"engine setup (KV cache {engine.kv_cache_bytes / GIB:.1f} GiB, CUDA graphs): {setup:.1f} s, of which "
        f"torch.compile {stats.get('compile_s', 0):.1f} s (compile={engine.use_compile}), "
        f"graph capture {stats.get('graph_capture_s', 0):.1f} s",
        flush=True,
    )

    prompts_a = random_prompts(64, 120, spec.vocab_size, 2)
    engine_tokens(engine, prompts_a, 1)  # builds the prefill's cuDNN plans for these shapes
    seconds_a = engine_tokens(engine, prompts_a, 512)
    tps_a = 64 * 512 / seconds_a
    print(f"case A engine: {tps_a:,.0f} tok/s ({seconds_a:.2f} s)", flush=True)
    stats_a = engine.last_stats
    step_a = stats_a["decode_s"] / stats_a["decode_steps"]
    replay_a, sampling_a = step_breakdown(engine, 64)
    print(  # at batch 64 a small model's step is far below any bandwidth bound: where does it go?
        f"case A step parts (batch 64): decode step {step_a * 1e3:.2f} ms (mean over the run); graph replay "
        f"{replay_a * 1e3:.2f} ms and sampling {sampling_a * 1e3:.2f} ms, timed alone at the run's last context",
        flush=True,
    )

    prompts_b = random_prompts(256, args.b_prompt_len, spec.vocab_size, 3)
    engine_tokens(engine, prompts_b, 1)  # first prefill of these shapes builds cuDNN plans: not timed
    prefill_b = engine_tokens(engine, prompts_b, 1)
    steps_b = []
    for _ in range(args.b_repeats):  # one run can catch a host stall (~1 ms a step seen once)
        total_b = engine_tokens(engine, prompts_b, args.b_new_tokens)
        run_stats = engine.last_stats
        assert run_stats["decode_steps"] == args.b_new_tokens - 1, "every sequence decoded in every step"
        steps_b.append(run_stats["decode_s"] / run_stats["decode_steps"])
    step_by_difference = (total_b - prefill_b) / (args.b_new_tokens - 1)
    step_b = statistics.median(steps_b)
    cached = 256 * (args.b_prompt_len + args.b_new_tokens / 2)  # over all sequences, mid-run
    bound_b = step_bytes(engine, cached) / peak
    roofline = bound_b / step_b
    print(
        f"case B engine: decode step {step_b * 1e3:.2f} ms (median of {len(steps_b)} runs: "
        f"{', '.join(f'{s * 1e3:.2f}' for s in steps_b)}) = {256 / step_b:,.0f} tok/s at context "
        f"~{cached / 256:.0f}; bound {bound_b * 1e3:.2f} ms -> {roofline:.1%} of {peak / 1e12:.2f} TB/s",
        flush=True,
    )

    print(f"case B decode step by the older difference method: {step_by_difference * 1e3:.2f} ms", flush=True)
    replay, sampling = step_breakdown(engine, 256)
    print(
        f"case B step parts: graph replay {replay * 1e3:.2f} ms, sampling {sampling * 1e3:.2f} ms, "
        f"host and the rest {(step_b - replay - sampling) * 1e3:.2f} ms",
        flush=True,
    )

    engine.sleep()  # the KV cache goes back to the GPU for transformers' own cache
    ratio = float("nan")
    if not args.skip_generate:
        seconds_hf = hf_generate_seconds(model, prompts_a, 512)
        tps_hf = 64 * 512 / seconds_hf
        ratio = tps_a / tps_hf
        print(
            f"case A transformers generate: {tps_hf:,.0f} tok/s ({seconds_hf:.1f} s); engine is {ratio:.1f}x"
        )
    print(f"engine_vs_generate_ratio={ratio:.2f} roofline_fraction={roofline:.3f}")


if __name__ == "__main__":
    main()
