from picorl.config import ModelConfig
from picorl.envs import make_env
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import render_prompt
from picorl.train.policy import make_policy
from picorl.train.sft import demonstration_tokens, run_sft


def test_sft_lowers_the_loss_on_demonstrations():
    model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    model = make_policy(model, ModelConfig(full_finetune=True, gradient_checkpointing=False))
    env = make_env("letter_counting", difficulty=[1])
    chats = [env.demonstration(seed) for seed in range(8)]
    losses = []
    run_sft(model, tokenizer, chats, steps=10, batch_size=4, lr=3e-3, device="cpu",
            log=lambda step, loss: losses.append(loss))  # fmt: skip
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_sft_trains_on_the_assistant_reply_only():
    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    chat = make_env("letter_counting", difficulty=[2]).demonstration(3)
    ids, start = demonstration_tokens(tokenizer, chat)
    assert ids[:start] == render_prompt(tokenizer, chat[:-1])
    reply = tokenizer.decode(ids[start:], skip_special_tokens=True)
    assert reply.strip() == chat[-1]["content"].strip()
