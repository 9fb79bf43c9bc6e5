"""A training run, top to bottom: set up, evaluate the base model, SFT, evaluate, then update /
evaluate / save.

Step 0 is the model before any RL update; step N is the model after N updates. Train, eval and
checkpoint rows all use that one counter (SFT rows carry their own ``sft/step``). Eval rows say their
``stage``: ``base`` (before anything), ``sft`` (after SFT; both at step 0) or ``rl``. Every eval episode
is written to ``eval_samples.jsonl``.

Everything that can be refused (the settings, the run folder, a resume's checkpoint and base model)
is checked before the first write (``picorl.train.resume``). Checkpoints are written every
``save_every`` SFT steps and updates, once SFT and the step-0 eval are done (so a resume never
repeats them), at the end, and on Ctrl-C at the next safe point (``picorl.train.interrupt``).

Under torchrun (``picorl.distributed``, docs/distributed.md) every rank runs this same loop on its
share of each update; rank 0 alone plans the run first, writes the run folder, logs and prints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console

from picorl import distributed
from picorl.algos.value_head import ValueHead, value_head_param_group
from picorl.config import Config, resolve_auto, to_dict
from picorl.eval.evaluate import evaluate
from picorl.logging.console import UpdateProgress, format_sft_line
from picorl.logging.metrics import MetricsLogger, NullLogger, log_sizes, read_jsonl
from picorl.models import load_model_and_tokenizer
from picorl.models.identity import base_model_record
from picorl.report.page import refresh_report
from picorl.rollout.episodes import sample_row
from picorl.runtime import env_factory, make_engine, pick_device, seed_everything, train_env_factory
from picorl.train.checkpoint import (
    restore_optimizer,
    restore_weights,
    rng_state,
    save_adapter,
    save_checkpoint,
    set_rng_state,
)
from picorl.train.curriculum import curriculum_tier
from picorl.train.interrupt import Interrupted, StopRequest
from picorl.train.policy import make_policy, trainable_parameters, trained_weights_copy
from picorl.train.resume import RunPlan, check_base, open_run, plan_run
from picorl.train.sft import DemonstrationStream, demonstration_tokens, run_sft
from picorl.train.update import UpdateContext, rl_update
from picorl.units import GIB

STOP_NOTICE = (
    "Ctrl-C: the run will save a checkpoint and stop after the current step "
    "(press Ctrl-C again to stop at once, losing the work since the last checkpoint)"
)


def train(config: Config) -> Path:
    """Run RL training as ``config`` says; returns the run directory."""
    device = distributed.local_device(pick_device(config.train.device))
    config = resolve_auto(config, on_gpu=device.type == "cuda")
    ranks = distributed.world_size()
    if config.rollout.num_tasks % ranks:
        raise ValueError(
            f"num_tasks ({config.rollout.num_tasks}) is the global number of groups per update and must "
            f"divide evenly over the {ranks} ranks; pass a multiple of {ranks}"
        )
    plan = distributed.main_first(lambda: plan_run(config))  # one rank reports a refused run
    try:
        with StopRequest(STOP_NOTICE) as stop:
            return _train(plan, device, stop)
    except KeyboardInterrupt:  # the second Ctrl-C
        raise Interrupted(f"stopped at once; {_last_checkpoint(plan)}") from None


def _train(plan: RunPlan, device: torch.device, stop: StopRequest) -> Path:
    config, run_dir = plan.config, plan.run_dir
    main = distributed.is_main()
    seed_everything(config.train.seed)  # every rank: the same LoRA initialisation
    total = config.train.num_updates
    quiet = None if main else Console(file=open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    with UpdateProgress(total, console=quiet) as progress:
        progress.print(f"picorl: run directory {run_dir}  (device {device}, model {config.model.model})")
        for note in plan.notes:
            progress.print(note)
        model, tokenizer = distributed.main_first(  # rank 0 fetches; the others read its download
            lambda: load_model_and_tokenizer(config.model.model, dtype=config.model.dtype, device=device)
        )
        base = base_model_record(model, config.model.model)
        check_base(plan, base)
        model = make_policy(model, config.model)
        value_head = make_value_head(model, config, device)
        optimizer, lr_scheduler = make_optimizer(config, model, value_head)
        groups = len(optimizer.param_groups)
        if main:
            open_run(plan)  # the first write
        checkpoint = plan.checkpoint
        if checkpoint is not None:
            restore_weights(checkpoint, model)
            lrs, decays = [config.train.lr, config.algo.value_lr], [config.train.weight_decay, 0.0]
            restore_optimizer(checkpoint, optimizer, lr_scheduler, lrs[:groups], decays[:groups])
            if value_head is not None:
                value_head.load_state_dict(checkpoint.state["value_head"])
        # The ranks start from rank 0's weights (the same seed made them equal; this makes sure).
        distributed.broadcast_parameters([p for g in optimizer.param_groups for p in g["params"]])
        restore_rng(checkpoint, config.train.seed)
        start = plan.step
        logger = MetricsLogger(
            run_dir, run_name=run_dir.name, config=_flat(config), wandb=config.run.wandb,
            wandb_project=config.run.wandb_project, resume=config.run.resume, tensorboard=config.run.tensorboard,
            resume_step=(start if checkpoint is not None else -1) if config.run.resume else None,
        ) if main else NullLogger()  # fmt: skip
        engine = make_engine(config, model, tokenizer, device)
        ctx = UpdateContext(
            config=config, model=model, tokenizer=tokenizer, engine=engine,
            make_env=train_env_factory(config, tokenizer=tokenizer),
            optimizer=optimizer, lr_scheduler=lr_scheduler, device=device, value_head=value_head,
        )  # fmt: skip

        def run_eval(step: int, stage: str) -> None:
            t0 = time.perf_counter()
            metrics, episodes = evaluate(
                engine, tokenizer, lambda tier: env_factory(config, [tier])(), tiers=config.eval.eval_tiers,
                num_tasks=config.eval.eval_num_tasks, eval_seed=config.eval.eval_seed,
                max_tokens=config.eval.eval_max_tokens,
            )  # fmt: skip
            if not main:  # rank 0 gathered every rank's episodes and logs them
                return
            metrics["time/eval_s"] = time.perf_counter() - t0
            metrics["stage"] = stage
            logger.log(step, metrics, kind="eval")
            logger.log_eval_samples([eval_sample_row(step, stage, e) for e in episodes])
            progress.eval(step, metrics)

        def save(step: int, **sft_state) -> None:
            rank_rngs = distributed.all_gather_objects(rng_state()) if distributed.active() else None
            if not main:
                return
            state = {
                "update": step,
                "phase": "sft" if sft_state else "rl",
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "value_head": value_head.state_dict() if value_head is not None else None,
                "log_sizes": log_sizes(run_dir),
                **sft_state,
            }
            if ctx.reference_weights is not None:  # the KL reference outlives the run's process
                state["reference_weights"] = {name: w.cpu() for name, w in ctx.reference_weights.items()}
            if rank_rngs is not None:  # each rank's generators, for a resume on as many ranks
                state["rank_rng"] = rank_rngs
            save_checkpoint(run_dir, model, tokenizer, base, state)
            save_adapter(model, tokenizer, run_dir / "adapter", base)
            plan.saved = f"update {step}" if not sft_state else f"SFT step {sft_state['sft_step']}"

        def sft_step_done(sft_step: int, sft_optimizer) -> None:
            """After each SFT step: the checkpoint cadence, and Ctrl-C's safe point."""
            if sft_step == config.sft.sft_steps:  # the step-0 checkpoint follows at once
                return
            stopping = distributed.any_rank(stop.requested)
            if stopping or (config.run.save_every and sft_step % config.run.save_every == 0):
                save(0, sft_step=sft_step, sft_optimizer=sft_optimizer.state_dict())
            if stopping:
                raise Interrupted(f"stopped after SFT step {sft_step}; {_last_checkpoint(plan)}")

        if checkpoint is None or checkpoint.state.get("phase") == "sft":
            if checkpoint is None:  # a checkpoint taken during SFT comes after the base eval
                run_eval(0, "base")
            if config.sft.sft_steps:
                resumed = checkpoint.state if checkpoint is not None else {}
                supervised_stage(config, ctx, logger, progress, start_step=resumed.get("sft_step", 0),
                                 optimizer_state=resumed.get("sft_optimizer"), after_step=sft_step_done)  # fmt: skip
                if not config.model.full_finetune and main:  # RL variants can start from it (init_adapter)
                    save_adapter(model, tokenizer, run_dir / "sft_adapter", base)
                run_eval(0, "sft")
            if config.algo.kl_to_start:
                ctx.reference_weights = trained_weights_copy(model)  # the policy RL starts from
            save(0)  # SFT and the step-0 eval are never repeated by a resume
            if distributed.any_rank(stop.requested):
                raise Interrupted(f"stopped after the step-0 eval; {_last_checkpoint(plan)}")
            if total == 0 and main:
                refresh_report(run_dir, warn=progress.print)
        elif config.algo.kl_to_start:  # plan_run checked that the checkpoint holds it
            saved = checkpoint.state["reference_weights"]
            ctx.reference_weights = {name: w.to(device) for name, w in saved.items()}
        last_plot = time.monotonic()  # plotting takes seconds: on a GPU that is as long as an update
        curriculum = config.env.curriculum_threshold is not None
        # read by rank 0 (which has cut the logs back on resume), the same on every rank
        history = distributed.broadcast_object(curriculum_history(run_dir, start) if curriculum and main else [])
        for update in range(start, total):
            step = update + 1
            if curriculum:
                tier = curriculum_tier(
                    history, config.env.train_difficulty, config.env.curriculum_threshold,
                    config.env.curriculum_window,
                )  # fmt: skip
                ctx.make_env = train_env_factory(config, [tier], ctx.tokenizer)
            metrics, episodes = rl_update(ctx, update)
            if curriculum:
                metrics["curriculum/tier"] = tier
                history.append((tier, metrics["reward/exact_fraction"]))
            if update == start and device.type == "cuda":
                kv_bytes = engine.fit_kv_cache(torch.cuda.max_memory_allocated(device))
                if kv_bytes is not None:
                    metrics["engine/kv_cache_gb"] = kv_bytes / GIB
                    progress.print(
                        f"KV cache sized to {kv_bytes / GIB:.1f} GiB after the first training step's peak"
                    )
            logger.log(step, metrics, kind="train")
            if config.run.samples_every and step % config.run.samples_every == 0:
                logger.log_samples(sample_rows(step, episodes))
            progress.update(step, metrics)
            evaluated = step == total or bool(config.eval.eval_every and step % config.eval.eval_every == 0)
            saved = step == total or bool(config.run.save_every and step % config.run.save_every == 0)
            if evaluated:
                run_eval(step, "rl")
            stopping = distributed.any_rank(stop.requested)  # after the eval, as Ctrl-C may come during it
            if saved or stopping:
                save(step)
            plot_due = time.monotonic() - last_plot >= config.run.plot_interval_s
            if main and (evaluated or saved or plot_due):
                refresh_report(run_dir, warn=progress.print)
                last_plot = time.monotonic()
            if stopping and step < total:
                raise Interrupted(f"stopped after update {step}; {_last_checkpoint(plan)}")
        logger.close()
        progress.print(f"done: {run_dir}")
    return run_dir


def restore_rng(checkpoint, seed: int) -> None:
    """The random generators a run continues with: the checkpoint's (each rank its own when the run is
    resumed on as many ranks as saved it), else the seed, offset per rank (:func:`distributed.rank_seed`)."""
    rank = distributed.rank()
    if checkpoint is None:
        if rank > 0:  # rank 0 keeps the stream a one-process run has
            seed_everything(distributed.rank_seed(seed))
        return
    saved = checkpoint.state.get("rank_rng")
    if saved is not None and len(saved) == distributed.world_size():
        set_rng_state(saved[rank])
        return
    set_rng_state(checkpoint.state["rng"])  # rank 0's, as a one-process run saves it
    if rank > 0:  # resumed on another number of ranks: fresh per-rank streams, still seeded
        seed_everything(distributed.rank_seed(seed) + checkpoint.state["update"])


def sample_rows(step: int, episodes) -> list[dict]:
    """samples.jsonl rows of every rank's episodes (on rank 0, by group; empty elsewhere). In a
    data-parallel run each row also names the ``rank`` that sampled it."""
    if not distributed.active():
        return [sample_row(step, e) for e in episodes]
    parts = distributed.gather_to_main([{**sample_row(step, e), "rank": distributed.rank()} for e in episodes])
    return [row for part in parts for row in part] if parts is not None else []


def _last_checkpoint(plan: RunPlan) -> str:
    """Where a stopped run stands, and the command that continues it."""
    saved = plan.saved or (f"update {plan.step}" if plan.checkpoint else None)
    command = f"picorl train --name {plan.run_dir.name} --resume"
    if plan.config.run.runs_dir != "runs":
        command += f" --runs-dir {plan.config.run.runs_dir}"
    if saved is None:
        return f"no checkpoint was written yet, so `{command}` starts the run over"
    return f"checkpoint at {saved} in {plan.run_dir / 'checkpoint'}; continue with `{command}`"


def supervised_stage(
    config: Config, ctx: UpdateContext, logger: MetricsLogger, progress: UpdateProgress, **resume
) -> None:
    """SFT on fresh demonstrations of the env's reasoning format (``picorl.train.sft``). ``resume``:
    ``start_step``, ``optimizer_state`` and ``after_step`` of :func:`picorl.train.sft.run_sft`."""
    sft = config.sft
    stitch = sft.sft_stitch_fraction
    envs = {tier: env_factory(config, [tier], ctx.tokenizer, stitch)() for tier in sft.sft_tiers}
    template_kwargs = next(iter(envs.values())).chat_template_kwargs  # one env config, every tier

    def demonstrate(tasks: list[tuple[int, int]]) -> list[tuple[list[int], int]]:
        chats = [envs[tier].demonstration(seed) for tier, seed in tasks]
        return demonstration_tokens(ctx.tokenizer, chats, **template_kwargs)

    def log(step: int, metrics: dict[str, float]) -> None:
        logger.log_sft(step, metrics)
        if step == 1 or step % 10 == 0 or step == sft.sft_steps:
            progress.print(format_sft_line(step, sft.sft_steps, metrics))

    stream = DemonstrationStream(
        demonstrate, sft.sft_tiers, steps=sft.sft_steps, batch_size=sft.sft_batch_size,
        curriculum=sft.sft_curriculum,
    )  # fmt: skip
    t0 = time.perf_counter()
    final = run_sft(
        ctx.model, ctx.tokenizer, stream, lr=sft.sft_lr, device=ctx.device, log=log,
        micro_batch_tokens=sft.sft_micro_batch_tokens, autocast=sft.sft_autocast, **resume,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if ctx.device.type == "cuda":  # SFT's cached activation blocks, for the engine and RL's own sizing
        torch.cuda.empty_cache()
    logger.log_sft(sft.sft_steps, {"sft/final_loss": final, "time/sft_s": seconds})
    progress.print(f"SFT: {sft.sft_steps} steps in {seconds:.0f} s, final loss {final:.3f}")


def curriculum_history(run_dir: Path, start: int) -> list[tuple[int, float]]:
    """(tier, exact fraction) of the train rows up to update ``start``, for a resumed curriculum."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [
        (int(r["curriculum/tier"]), float(r["reward/exact_fraction"]))
        for r in rows
        if r.get("kind") == "train" and r.get("step", 0) <= start and "curriculum/tier" in r
    ]


def eval_sample_row(step: int, stage: str, episode) -> dict:
    """One eval episode in full, so any eval number can be re-scored from ``eval_samples.jsonl``."""
    return {
        "step": step,
        "stage": stage,
        "tier": episode.info.get("tier"),
        "task_seed": episode.task_seed,
        "prompt": episode.messages[: len(episode.messages) - episode.num_turns],
        "completion": episode.completion_text,
        "reward": episode.reward,
        "correct": bool(episode.info.get("correct")),
        "expected": episode.info.get("expected"),
        "parsed": episode.info.get("parsed"),
        "completion_tokens": episode.num_generated,
        "finish_reason": episode.finish_reason,
    }


def make_optimizer(config: Config, model, value_head=None):
    """AdamW over the policy's trainable weights (and PPO's value head, in its own group) and the
    linear warm-up schedule; ``benchmarks/update.py`` builds its updates with this too."""
    groups = [{"params": trainable_parameters(model)}]
    if value_head is not None:
        groups.append(value_head_param_group(value_head, config.algo.value_lr))
    optimizer = torch.optim.AdamW(groups, lr=config.train.lr, weight_decay=config.train.weight_decay)
    warmup_steps = config.train.warmup_steps
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1))
    )
    return optimizer, lr_scheduler


def make_value_head(model, config: Config, device):
    """PPO's value head. The trainer makes it BEFORE the optimizer, so that the optimizer trains it
    (the seed made it after, and its value head never learned)."""
    if config.algo.algo != "ppo":
        return None
    return ValueHead(model.config.hidden_size).to(device)


def _flat(config: Config) -> dict:
    return {f"{section}.{k}": v for section, values in to_dict(config).items() for k, v in values.items()}
