"""SFT throughput: tokens/s of ``picorl.train.sft.run_sft`` on letter-counting demonstrations.

Speed does not depend on weight values, so the model is SmolLM2-135M's shape with random bf16 weights
(or a real model with ``--model``); the demonstrations are real (the env's trace format, tokenized by
the tokenizer given). Variants (``--variants``, each run at every ``--micro-batch-tokens`` value):
``lora`` (PEFT LoRA, fp32 adapters), ``lora_ckpt`` (with gradient checkpointing), ``lora_bf16`` (the
``sft_autocast`` option: bf16 autocast, adapter products in bf16), ``full`` (every weight, bf16).
Prints one line per variant (tokens/s, seconds a step, peak GPU memory) and a last parseable line, e.g.

    PYTHONPATH=. python benchmarks/sft_step.py --tokenizer ~/.cache/picorl/smollm2-135m/tokenizer
    ... sft_tokens_per_s_lora=... sft_tokens_per_s_lora_ckpt=... sft_tokens_per_s_full=...
    PYTHONPATH=. python benchmarks/sft_step.py --tokenizer ... --cot pieces --variants lora,lora_bf16 \
        --micro-batch-tokens 16384 65536
    ... sft_tokens_per_s_lora_16384=... sft_tokens_per_s_lora_65536=... sft_tokens_per_s_lora_bf16_16384=...
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from picorl.config import ModelConfig
from picorl.envs import make_env
from picorl.models import load_model_and_tokenizer
from picorl.runtime import token_pieces
from picorl.train.policy import make_policy
from picorl.train.sft import DemonstrationStream, demonstration_tokens, run_sft

SMOLLM2_SHAPE = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
    rope_theta=100000.0, rms_norm_eps=1e-5,
)  # fmt: skip


def build(args, full: bool, checkpointing: bool):
    if args.model:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype="auto", device=args.device)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2_SHAPE)).to(args.device, torch.bfloat16 if args.device == "cuda" else torch.float32)
    config = ModelConfig(full_finetune=full, lora_rank=args.lora_rank, gradient_checkpointing=checkpointing)
    return make_policy(model, config), tokenizer


VARIANTS = {  # name: (full fine-tune, gradient checkpointing, bf16 autocast)
    "lora": (False, False, False),
    "lora_ckpt": (False, True, False),
    "lora_bf16": (False, False, True),
    "full": (True, False, False),
}


def measure(args, variant: str, micro_batch_tokens: int) -> float:
    full, checkpointing, autocast = VARIANTS[variant]
    model, tokenizer = build(args, full, checkpointing)
    extra = {"text_pieces": token_pieces(tokenizer)} if args.cot == "pieces" else {}
    envs = {t: make_env("letter_counting", difficulty=[t], cot=args.cot, **extra) for t in args.tiers}

    def demonstrate(tasks):
        return demonstration_tokens(tokenizer, [envs[tier].demonstration(seed) for tier, seed in tasks])

    stream = DemonstrationStream(
        demonstrate, args.tiers, steps=args.steps, batch_size=args.batch_size, curriculum=False
    )
    rows: list[dict] = []
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_sft(model, tokenizer, stream, lr=1e-4, device=args.device, log=lambda s, m: rows.append(m),
            micro_batch_tokens=micro_batch_tokens, autocast=autocast)  # fmt: skip
    rates = [r["sft/tokens_per_s"] for r in rows[3:]]  # the first steps pay for allocator warm-up
    rate = statistics.median(rates)
    pad = statistics.mean(r["sft/pad_fraction"] for r in rows)
    length = statistics.mean(len(d.ids) for s in range(args.steps) for d in stream.batch(s))
    step_s = args.batch_size * length / rate
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    print(f"{variant:10s} micro {micro_batch_tokens:>7,} {rate:10,.0f} tok/s  {step_s:.3f} s a step  "
          f"peak {peak:.1f} GiB  ({args.batch_size} x ~{length:.0f} tokens a step, padding {pad:.2f})",
          flush=True)  # fmt: skip
    if args.profile and variant == "lora":
        profile(model, tokenizer, stream, args.device)
    del model
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return rate


def profile(model, tokenizer, stream, device: str = "cuda") -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run_sft(model, tokenizer, stream, lr=1e-4, device=device, log=lambda *_: None, start_step=stream.steps - 2)
        if device == "cuda":
            torch.cuda.synchronize()
    print(f"2 profiled steps: {time.perf_counter() - t0:.3f} s")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real model instead of the random SmolLM2 shape")
    parser.add_argument("--tokenizer", help="tokenizer folder for the random SmolLM2 shape")
    parser.add_argument("--tiers", type=int, nargs="+", default=[6, 7, 8])
    parser.add_argument("--cot", default="scan")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--micro-batch-tokens", type=int, nargs="+", default=[16384],
                        help="padded tokens per forward/backward; several values: each variant at each")
    parser.add_argument("--variants", default="lora,lora_ckpt,full",
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if not args.model and not args.tokenizer:
        parser.error("give --tokenizer (random SmolLM2 shape) or --model")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    several = len(args.micro_batch_tokens) > 1
    results = {
        f"sft_tokens_per_s_{v}" + (f"_{m}" if several else ""): measure(args, v, m)
        for v in variants
        for m in args.micro_batch_tokens
    }
    print(" ".join(f"{key}={rate:.0f}" for key, rate in results.items()))


if __name__ == "__main__":
    main()
