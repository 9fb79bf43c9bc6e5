"""The reference engine (transformers ``generate``): its log-probs are those of a forward pass."""

import torch

from picorl.engine.hf_engine import HFEngine
from picorl.engine.types import SamplingParams
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import render_prompt


def test_hf_engine_logprobs_match_a_forward_pass():
    model, tok = load_model_and_tokenizer("tiny-llama")
    engine = HFEngine(model, tok)
    prompt = render_prompt(tok, [{"role": "user", "content": "count"}])
    (group,) = engine.generate([prompt], SamplingParams(max_tokens=6, temperature=0.8, seed=3), n=2)
    for c in group:
        ids = torch.tensor([prompt + c.token_ids])
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / 0.8
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=1e-4)
