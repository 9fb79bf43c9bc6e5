"""Run configuration: one dataclass per concern, validated on construction.

Every field is documented where it is defined (its ``help``), and every field is also a command-line
flag: ``--`` plus the field name with dashes (``train_difficulty`` -> ``--train-difficulty``), the seed's
names where it had one. A TOML file (``--config FILE``) holds the same fields in sections named after
the dataclasses (``[model]``, ``[env]``, ``[rollout]``, ``[algo]``, ``[train]``, ``[sft]``, ``[eval]``,
``[run]``); flags override the file. Fields whose default is ``None`` are sized for the device the run
lands on (see :func:`resolve_auto`); the saved ``config.toml`` holds the resolved values.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from picorl.algos.config import AlgoConfig
from picorl.engine.config import ADAPTER_DTYPES
from picorl.envs.traces import COT_FORMATS
from picorl.options import check, opt, typed_value

# TrainConfig.train_attention: "auto" leaves torch's SDPA kernel order; the others put one kernel first
TRAIN_ATTENTION = ("auto", "flash", "cudnn", "efficient", "math")


@dataclass
class ModelConfig:
    model: str = opt(
        "smollm2-135m",
        "Built-in name (smollm2-135m, qwen2.5-coder-0.5b, tiny-qwen3, tiny-llama), a Hugging Face id, "
        "a local directory or a .gguf file.",
    )
    dtype: str = opt("auto", "Weights dtype: auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")
    full_finetune: bool = opt(False, "Train every weight instead of a LoRA adapter.")
    lora_rank: int = opt(32, "LoRA rank r (Hu et al. 2021).")
    lora_alpha: int = opt(64, "LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = opt(0.0, "Dropout on the LoRA input.")
    lora_target_modules: str = opt(
        "all-linear",
        "Comma-separated module names to adapt, or all-linear (every linear layer but the head).",
    )
    gradient_checkpointing: bool | None = opt(
        None, "Recompute activations in backward to save memory (auto: on for GPU, off for CPU)."
    )
    checkpoint_layers: float = opt(
        1.0,
        "With gradient_checkpointing, the share of decoder layers (the first ones) that recompute their "
        "activations in backward; the rest keep them. Each layer left out saves re-running its forward "
        "(about a third of its training arithmetic with LoRA) and costs its activations' memory "
        "(Chen et al. 2016, 'Training deep nets with sublinear memory cost').",
    )
    init_adapter: str | None = opt(
        None,
        "Start from this saved LoRA adapter folder (e.g. runs/NAME/sft_adapter, to run RL on top of an "
        "earlier SFT) instead of a fresh one; its own rank and targets apply.",
    )

    def __post_init__(self) -> None:
        check(
            self.dtype in ("auto", "bf16", "fp16", "fp32"),
            f"dtype must be auto|bf16|fp16|fp32, got {self.dtype!r}",
        )
        check(self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank}")
        check(self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        check(
            0 <= self.checkpoint_layers <= 1, f"checkpoint_layers must be in [0, 1], got {self.checkpoint_layers}"
        )


@dataclass
class EnvConfig:
    env: str = opt("letter_counting", "Environment name.")
    train_difficulty: list[int] = opt([1], "Tier(s) 1-10 of the training tasks (several: mixed).")
    reward_mode: str = opt(
        "partial",
        "partial: 0.1 + 0.9 * fraction of letters exactly right (the seed's final rule); binary: 1/0.",
    )
    cot: str = opt(
        "scan",
        "Reasoning format of the SFT demonstrations (picorl/envs/traces.py): scan (one character per "
        "line with a running count of each asked letter), pieces (scan plus a copy of every multi-letter "
        "token the tokenizer cut the string into), window (scan plus a copy of every 8-character block) "
        "or spell (the seed's: spell the string, then state the counts).",
    )
    thinking: bool = opt(
        False,
        "Thinking mode: demonstrations reason inside <think>...</think> and the chat template gets "
        "enable_thinking (Qwen3); only the answer after </think> is scored.",
    )
    curriculum_threshold: float | None = opt(
        None,
        "RL tier curriculum: train on the train_difficulty tiers one at a time, in the order given, "
        "moving to the next when the mean exact-match of the last curriculum_window updates reaches "
        "this. Off unless set.",
    )
    curriculum_window: int = opt(5, "Updates averaged for the curriculum's promotion rule.")
    train_stitch_fraction: float = opt(
        0.0,
        "Share of RL's training tasks on tiers 6-10 whose random string is stitched from the tokenizer's "
        "alphabetic tokens of 4+ letters (the pieces a small model misspells), as sft_stitch_fraction does "
        "for SFT; the eval sets are never stitched (0 = off).",
    )

    def kwargs(self) -> dict[str, object]:
        """Keyword arguments that build this env (besides its tiers) with ``make_env``."""
        return {"reward_mode": self.reward_mode, "cot": self.cot, "thinking": self.thinking}

    def __post_init__(self) -> None:
        if isinstance(self.train_difficulty, int):
            self.train_difficulty = [self.train_difficulty]
        check(
            all(1 <= t <= 10 for t in self.train_difficulty) and self.train_difficulty,
            f"train_difficulty must be tiers in 1..10, got {self.train_difficulty}",
        )
        check(
            0.0 <= self.train_stitch_fraction <= 1.0,
            f"train_stitch_fraction must be in [0, 1], got {self.train_stitch_fraction}",
        )
        check(
            self.reward_mode in ("partial", "binary"),
            f"reward_mode must be partial|binary, got {self.reward_mode!r}",
        )
        check(
            self.cot in COT_FORMATS, f"cot must be {'|'.join(COT_FORMATS)}, got {self.cot!r}"
        )
        check(
            self.curriculum_threshold is None or 0 < self.curriculum_threshold <= 1,
            f"curriculum_threshold must be in (0, 1], got {self.curriculum_threshold}",
        )
        check(self.curriculum_window >= 1, f"curriculum_window must be >= 1, got {self.curriculum_window}")


@dataclass
class RolloutConfig:
    k: int = opt(8, "Samples per prompt: one GRPO group is k samples of ONE prompt (num_generations in TRL).")
    num_tasks: int | None = opt(
        None,
        "Prompts (groups) per update, GLOBAL: under torchrun they are split evenly over the ranks, so it "
        "must be a multiple of their number (auto: 8 on GPU, 4 on CPU).",
    )
    max_tokens: int | None = opt(None, "Max new tokens per completion (auto: 512 on GPU, 96 on CPU).")
    temperature: float = opt(1.0, "Sampling temperature for training rollouts.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1 = off).")
    top_k: int = opt(0, "Top-k sampling (0 = off).")
    engine: str = opt("picorl", "Rollout engine: picorl (built-in paged engine) or hf (simple reference).")
    kv_cache_gib: float | None = opt(
        None, "KV-cache size in GiB (default: kv_cache_fraction of free memory)."
    )
    kv_cache_fraction: float = opt(
        0.5,
        "Fraction of the GPU memory left free after the first training step that the KV cache may take "
        "(never more than the engine can fill: 256 sequences of the longest prompt + completion).",
    )
    engine_adapter_dtype: str = opt(
        "model",
        "The dtype the engine's copies of the LoRA adapters multiply in: model (the weights', bf16 on a "
        "GPU: their A joins the base GEMM, the adapter's contribution is rounded to bf16 before it is "
        "added; LoRA +5.8% a decode step instead of +31%) or adapter (theirs, fp32, as PEFT computes "
        "them in training). On an fp32 model (CPU) both are the same.",
    )

    def __post_init__(self) -> None:
        check(self.k >= 1, f"k must be >= 1, got {self.k}")
        check(
            self.engine_adapter_dtype in ADAPTER_DTYPES,
            f"engine_adapter_dtype must be adapter|model, got {self.engine_adapter_dtype!r}",
        )
        check(self.num_tasks is None or self.num_tasks >= 1, f"num_tasks must be >= 1, got {self.num_tasks}")
        check(
            self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"
        )
        check(self.temperature > 0, f"temperature must be > 0 for training rollouts, got {self.temperature}")
        check(self.engine in ("picorl", "hf"), f"engine must be picorl|hf, got {self.engine!r}")
        check(
            0 < self.kv_cache_fraction <= 1,
            f"kv_cache_fraction must be in (0, 1], got {self.kv_cache_fraction}",
        )


@dataclass
class TrainConfig:
    num_updates: int | None = opt(None, "Policy updates (auto: 100 on GPU, 10 on CPU).")
    lr: float = opt(2e-5, "AdamW learning rate (after warm-up it stays constant).")
    warmup_steps: int = opt(2, "Linear learning-rate warm-up, in optimizer steps.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    max_grad_norm: float = opt(1.0, "Clip the gradient's global norm to this (0 = no clipping).")
    micro_batch_size: int | None = opt(None, "Sequences per forward/backward (auto: 16 on GPU, 8 on CPU).")
    micro_batch_tokens: int | None = opt(
        None,
        "Fill each forward/backward with up to this many padded tokens (rows x longest row, sequences "
        "sorted by length) instead of micro_batch_size sequences; 0 = sized from the GPU memory free "
        "when training starts, at the bytes per token the previous update's peak showed (the first "
        "update, and any CPU run, uses micro_batch_size). Off unless set; the loss is the same.",
    )
    train_autocast: bool = opt(
        False,
        "Run the training forward of the decoder under bf16 autocast: the fp32 LoRA adapter matrices "
        "multiply in bf16 on tensor cores (the optimizer still holds and updates fp32 weights); the output "
        "head, log-probs and loss stay as they are. For GPUs; off by default.",
    )
    compile_train: bool = opt(
        False,
        "torch.compile each decoder layer for the train phase (one graph serves every layer, with dynamic "
        "shapes; the first update pays the compilation). Off by default.",
    )
    train_attention: str = opt(
        "auto",
        "The SDPA kernel the train phase tries first: auto (torch's order; on Hopper GPUs that picks "
        "cuDNN, which builds an execution plan for each new shape, and micro-batch shapes change every "
        "update), flash, cudnn, efficient or math. Unavailable ones fall back down torch's order. "
        "GPUs only: on a CPU, torch's order is fixed.",
    )
    seed: int = opt(0, "Seed for tasks, sampling and initialisation: the same seed gives the same CPU run.")
    device: str = opt("auto", "auto (cuda if available), cuda, cuda:N or cpu.")

    def __post_init__(self) -> None:
        check(
            self.num_updates is None or self.num_updates >= 0,
            f"num_updates must be >= 0, got {self.num_updates}",
        )
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}")
        check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            f"micro_batch_size must be >= 1, got {self.micro_batch_size}",
        )
        check(
            self.micro_batch_tokens is None or self.micro_batch_tokens >= 0,
            f"micro_batch_tokens must be >= 0 (0 = from free GPU memory), got {self.micro_batch_tokens}",
        )
        check(
            self.train_attention in TRAIN_ATTENTION,
            f"train_attention must be {'|'.join(TRAIN_ATTENTION)}, got {self.train_attention!r}",
        )


@dataclass
class SFTConfig:
    sft_steps: int | None = opt(
        None,
        "Supervised steps on fresh demonstrations (the env's reasoning format) before RL "
        "(auto: 200 on GPU, 12 on CPU; 0 = off).",
    )
    sft_batch_size: int = opt(
        8, "Demonstrations per SFT step, GLOBAL (split over torchrun's ranks; each step draws fresh ones)."
    )
    sft_lr: float = opt(
        1e-3,
        "Peak SFT learning rate (5% warm-up, cosine to a tenth); for LoRA. A full fine-tune wants ~1e-4.",
    )
    sft_tiers: list[int] | None = opt(None, "Tiers of the SFT demonstrations (auto: the training tiers).")
    sft_curriculum: bool = opt(
        True, "Unlock sft_tiers in the order given, evenly over the first half of SFT."
    )
    sft_micro_batch_tokens: int = opt(
        16384, "Padded tokens per SFT forward/backward; larger batches are split, gradients summed."
    )
    sft_autocast: bool = opt(
        False,
        "Run SFT's forward and backward under bf16 autocast, the LoRA adapter products included (as "
        "train_autocast does for RL); the optimizer keeps fp32 adapter weights. For GPUs; off by default.",
    )
    sft_stitch_fraction: float = opt(
        0.0,
        "Share of SFT's random-string demonstrations (tiers 6-10) whose string is stitched from the "
        "tokenizer's alphabetic tokens of 4+ letters instead of drawn letter by letter, so the model "
        "learns to spell the long tokens it misspells; the eval's never are (RL's: train_stitch_fraction; 0 = off).",
    )

    def __post_init__(self) -> None:
        check(self.sft_steps is None or self.sft_steps >= 0, f"sft_steps must be >= 0, got {self.sft_steps}")
        check(self.sft_batch_size >= 1, f"sft_batch_size must be >= 1, got {self.sft_batch_size}")
        check(self.sft_lr > 0, f"sft_lr must be > 0, got {self.sft_lr}")
        check(
            self.sft_tiers is None or (bool(self.sft_tiers) and all(1 <= t <= 10 for t in self.sft_tiers)),
            f"sft_tiers must be tiers in 1..10, got {self.sft_tiers}",
        )
        check(self.sft_micro_batch_tokens >= 1, "sft_micro_batch_tokens must be >= 1")
        check(
            0.0 <= self.sft_stitch_fraction <= 1.0,
            f"sft_stitch_fraction must be in [0, 1], got {self.sft_stitch_fraction}",
        )


@dataclass
class EvalConfig:
    eval_every: int | None = opt(
        None, "Evaluate every N updates (also before training and at the end; 0 = only those)."
    )
    eval_num_tasks: int | None = opt(
        None, "Fixed, seeded eval tasks per tier, GLOBAL (split over torchrun's ranks) (auto: 200 on GPU, 24 on CPU)."
    )
    eval_tiers: list[int] | None = opt(
        None, "Tiers to evaluate (auto: the training tiers and their neighbours)."
    )
    eval_max_tokens: int | None = opt(None, "Max new tokens in eval (default: max_tokens).")
    eval_seed: int = opt(1234, "Seed of the eval sets; independent of the training seed so runs compare.")

    def __post_init__(self) -> None:
        check(
            self.eval_every is None or self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"
        )
        check(
            self.eval_num_tasks is None or self.eval_num_tasks >= 1,
            f"eval_num_tasks must be >= 1, got {self.eval_num_tasks}",
        )
        check(
            self.eval_tiers is None or all(1 <= t <= 10 for t in self.eval_tiers),
            f"eval_tiers must be tiers in 1..10, got {self.eval_tiers}",
        )


@dataclass
class RunConfig:
    name: str | None = opt(None, "Run name: the run lives in runs/NAME/ (default: a timestamp).")
    runs_dir: str = opt("runs", "Parent folder of run directories.")
    save_every: int = opt(
        25,
        "Save the adapter and a resumable checkpoint every N updates and SFT steps (also after SFT and the "
        "step-0 eval, and at the end; 0 = only those).",
    )
    samples_every: int = opt(1, "Write every rollout of every N-th update to samples.jsonl (0 = never).")
    plot_interval_s: float = opt(
        20.0,
        "Refresh training_curves.png and report.html at most this often (seconds; also after each eval "
        "and save).",
    )
    resume: bool = opt(
        False,
        "Continue runs/NAME/ from its newest checkpoint with its saved settings; flags given override the "
        "safe ones (a changed model, LoRA shape, algo or env is refused).",
    )
    wandb: bool = opt(False, "Also log to Weights & Biases (offline works: set WANDB_MODE=offline).")
    wandb_project: str = opt("picorl", "Weights & Biases project.")
    tensorboard: bool = opt(False, "Also write TensorBoard event files to runs/NAME/tensorboard/.")

    def __post_init__(self) -> None:
        check(
            self.name is None or ("/" not in self.name and self.name not in ("", ".", "..")),
            f"name must be a plain folder name, got {self.name!r}",
        )
        for key in ("save_every", "samples_every", "plot_interval_s"):
            check(getattr(self, key) >= 0, f"{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "env": EnvConfig, "rollout": RolloutConfig, "algo": AlgoConfig,
    "train": TrainConfig, "sft": SFTConfig, "eval": EvalConfig, "run": RunConfig,
}  # fmt: skip


def field_index() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every field name -> (section, field). Field names are unique across sections (they are flags)."""
    index: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = (section, f)
    return index


def build_config(overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Make a validated Config from ``{section: {field: value}}``; unknown keys are clear errors."""
    overrides = overrides or {}
    parts = {}
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section [{section}]; sections are: {', '.join(SECTIONS)}")
        known = {f.name for f in fields(SECTIONS[section])}
        unknown = sorted(set(values) - known)
        if unknown:
            hint = _suggest(unknown[0])
            raise ValueError(
                f"unknown key {unknown[0]!r} in [{section}]{hint}; keys there: {', '.join(sorted(known))}"
            )
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        values = {
            key: typed_value(f"[{section}] {key}", value, hints[key])
            for key, value in overrides.get(section, {}).items()
        }
        parts[section] = cls(**values)
    config = Config(**parts)
    check_across_sections(config)
    return config


# Algorithms whose baseline is the mean of a prompt's own group: with one sample per prompt every
# advantage is 0 and nothing trains (the run would look healthy and learn nothing).
GROUP_BASELINE_ALGOS = ("grpo", "dr_grpo", "rloo")


def check_across_sections(config: Config) -> None:
    """Combinations no single section can see are wrong."""
    k, algo = config.rollout.k, config.algo
    check(
        k >= 2 or algo.algo not in GROUP_BASELINE_ALGOS,
        f"k = 1 with algo = {algo.algo} trains nothing: its baseline is the mean of each prompt's group of k "
        "samples, so one sample has advantage 0. Use --k 2 or more, or --algo reinforce (batch-mean baseline).",
    )
    check(
        k >= 2 or algo.zero_variance == "keep",
        f"k = 1 with zero_variance = {algo.zero_variance} leaves nothing to train (a group of one sample "
        "always has zero variance); use --zero-variance keep or --k 2 or more",
    )
    check(
        not (algo.beta > 0 and algo.kl_reference == "base" and config.model.full_finetune),
        "kl_reference = base is the LoRA policy with its adapter switched off, and a full fine-tune has no "
        "adapter: use --kl-reference start (a copy of the weights RL starts from) or --beta 0",
    )
    check(
        k >= 2 or algo.scale_rewards != "group",
        "k = 1 with scale_rewards = group divides by the std of one sample (0); use --scale-rewards batch or none",
    )


def _suggest(key: str) -> str:
    index = field_index()
    if key in index:
        return f" (it belongs in [{index[key][0]}])"
    import difflib

    close = difflib.get_close_matches(key, list(index), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a config TOML into ``{section: {field: value}}`` (a top-level key is placed in its section)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    index = field_index()
    for key, value in data.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        elif key in index:
            out.setdefault(index[key][0], {})[key] = value
        else:
            raise ValueError(f"unknown key {key!r} in {path}{_suggest(key)}")
    return out


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return {section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS}


def dump_toml(config: Config) -> str:
    """Serialise a config as TOML (None values, i.e. unresolved autos, are left out)."""
    lines: list[str] = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


# The sizes a run gets when a field is left at None ("auto"): a first run on a 2-core CPU shows a
# curve in about ten minutes; on a GPU the same command runs a real experiment.
AUTO_SIZES = {
    #                 (GPU, CPU)
    "num_tasks": (8, 4),
    "max_tokens": (512, 96),
    "num_updates": (100, 10),
    "micro_batch_size": (16, 8),
    "sft_steps": (200, 12),
    "eval_every": (10, 0),
    "eval_num_tasks": (200, 24),
    "gradient_checkpointing": (True, False),
}


def resolve_auto(config: Config, on_gpu: bool) -> Config:
    """Fill every ``None`` (auto) field for the device; returns a new Config."""
    config = build_config(to_dict(config))
    index = field_index()
    for name, (gpu_value, cpu_value) in AUTO_SIZES.items():
        section = getattr(config, index[name][0])
        if getattr(section, name) is None:
            setattr(section, name, gpu_value if on_gpu else cpu_value)
    if config.eval.eval_max_tokens is None:
        config.eval.eval_max_tokens = config.rollout.max_tokens
    if config.eval.eval_tiers is None:
        config.eval.eval_tiers = default_eval_tiers(config.env.train_difficulty)
    if config.sft.sft_tiers is None:
        config.sft.sft_tiers = list(config.env.train_difficulty)
    return config


def default_eval_tiers(train_tiers: list[int]) -> list[int]:
    """The training tiers plus the tier below and above each (where they exist)."""
    tiers = {t + d for t in train_tiers for d in (-1, 0, 1)}
    return sorted(t for t in tiers if 1 <= t <= 10)
