"""The trained weights can be copied and swapped in place for a while (the KL penalty's start reference)."""

import pytest
import torch

from picorl.config import ModelConfig
from picorl.models import load_model_and_tokenizer
from picorl.train.policy import make_policy, trained_weights_copy, weights_swapped


def lora_policy():
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    return make_policy(model, ModelConfig(lora_rank=4))


def test_copy_holds_the_trained_weights_only_and_does_not_follow_them():
    policy = lora_policy()
    copy = trained_weights_copy(policy)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert set(copy) == trained and all("lora_" in n for n in copy)
    name = next(iter(copy))
    with torch.no_grad():
        dict(policy.named_parameters())[name].add_(1.0)
    assert not torch.equal(copy[name], dict(policy.named_parameters())[name])


def test_swapped_weights_are_in_place_and_restored_even_after_an_error():
    policy = lora_policy()
    params = dict(policy.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    storage = {n: p.data_ptr() for n, p in params.items()}
    other = {n: torch.full_like(p, 0.5) for n, p in params.items() if "lora_B" in n}
    with weights_swapped(policy, other):
        for n, value in other.items():
            assert torch.equal(params[n], value)
    with pytest.raises(RuntimeError, match="inside"), weights_swapped(policy, other):
        raise RuntimeError("inside")
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]) and p.data_ptr() == storage[n], n


def test_weights_for_a_parameter_the_model_lacks_are_refused():
    policy = lora_policy()
    with pytest.raises(ValueError, match="lacks"), weights_swapped(policy, {"no.such.weight": torch.zeros(1)}):
        pass


def test_checkpoint_layers_recompute_the_first_share_and_leave_the_gradients_as_they_are():
    """``checkpoint_layers``: the first share of the layers runs its forward twice (once again in
    backward), the rest once; the LoRA gradients are those of full checkpointing and of none."""
    import copy

    from picorl.models.loading import unwrap_hf_model
    from picorl.train.logprobs import chosen_token_logprobs

    base, _ = load_model_and_tokenizer("tiny-qwen3")
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False
    grads = {}
    for share, on in ((1.0, True), (0.5, True), (0.0, True), (1.0, False)):
        torch.manual_seed(0)  # the same adapter initialisation every time
        policy = make_policy(copy.deepcopy(base), ModelConfig(lora_rank=4, gradient_checkpointing=on,
                                                             checkpoint_layers=share))  # fmt: skip
        policy.train()
        layers = unwrap_hf_model(policy).model.layers
        runs = [0] * len(layers)
        # counted inside the checkpointed forward (the layer's own hooks are outside it), before the MLP
        # runs: the recompute stops as soon as it has every saved tensor
        for i, layer in enumerate(layers):
            layer.mlp.register_forward_pre_hook(lambda *_, i=i, runs=runs: runs.__setitem__(i, runs[i] + 1))
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(len(name)))
        chosen_token_logprobs(policy, ids, None, mask).sum().backward()
        recomputing = round(share * len(layers)) if on else 0
        assert runs == [2] * recomputing + [1] * (len(layers) - recomputing), (share, on)
        grads[share, on] = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    want = grads[1.0, False]
    assert want
    for key, got in grads.items():
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=f"{key} {name}")


def test_checkpoint_layers_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="checkpoint_layers must be in"):
        ModelConfig(checkpoint_layers=1.5)
