"""picorl.engine.layers.fused_linear: re-homing the trainer's q/k/v and gate/up weights into one buffer,
checked against the modules' own forwards (plain, Qwen2 biases, PEFT LoRA in fp32 and bf16, the
adapters stacked into two GEMMs per group), training through the re-homed parameters, and save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from picorl.engine.config import EngineConfig
from picorl.engine.layers.fused_linear import (
    adapters_supported,
    base_linear,
    fuse_weights,
    fused_forward,
    is_intact,
    stack_adapters,
    stacked_rank,
)


def projection_groups(model: nn.Module) -> list[list[nn.Module]]:
    """[q, k, v], [o], [gate, up] and [down] of every decoder layer (works on PEFT-wrapped models too)."""
    layers = next(m for name, m in model.named_modules() if name.endswith("model.layers"))
    groups = []
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        groups += [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]
    return groups


def fuse_all(model: nn.Module) -> list[tuple[object, list[nn.Module]]]:
    fused = [(fuse_weights(group), group) for group in projection_groups(model)]
    assert all(f is not None for f, _ in fused)
    return fused


def lora_model(tiny_model, arch: str = "qwen2", dtype: torch.dtype = torch.float32, **config):
    model = tiny_model(arch).to(dtype)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **config)
    return get_peft_model(model, lora)


def ids(n: int = 7) -> torch.Tensor:
    return torch.randint(0, 256, (2, n), generator=torch.Generator().manual_seed(3))


def inputs(dtype: torch.dtype = torch.float32, group: list[nn.Module] | None = None) -> torch.Tensor:
    """[2, 5, K]: K the hidden size, or what ``group``'s projections read (o and down read wider)."""
    width = 64 if group is None else base_linear(group[0]).in_features
    return torch.randn(2, 5, width, generator=torch.Generator().manual_seed(4)).to(dtype)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_fusing_rehomes_the_same_parameters_without_changing_values(tiny_model, arch):
    model = tiny_model(arch)
    with torch.no_grad():
        logits = model(ids()).logits
    params = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in params.items()}
    flags = {name: p.requires_grad for name, p in params.items()}

    for fused, group in fuse_all(model):
        assert is_intact(fused, group)
        start = 0
        for module, n in zip(group, fused.sizes):
            assert module.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
            assert module.weight.data_ptr() == fused.weight[start].data_ptr()
            assert torch.equal(fused.weight[start : start + n], module.weight)
            if module.bias is not None:
                assert module.bias.data_ptr() == fused.bias[start].data_ptr()
            start += n
        has_qkv_bias = arch == "qwen2" and len(group) == 3  # only Qwen2 has biases: on q/k/v
        assert (fused.bias is not None) == has_qkv_bias
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    for name, p in model.named_parameters():
        assert torch.equal(p, values[name]) and p.requires_grad == flags[name], name
    with torch.no_grad():
        torch.testing.assert_close(model(ids()).logits, logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2"])
def test_fused_forward_matches_the_modules(tiny_model, arch):
    model = tiny_model(arch)
    for fused, group in fuse_all(model):
        assert adapters_supported(group)
        for x in (inputs(group=group), inputs(group=group)[0]):  # [B, T, K] and [T, K]
            outs = fused_forward(fused, group, x)
            assert [o.shape for o in outs] == [m(x).shape for m in group]
            for out, module in zip(outs, group):
                torch.testing.assert_close(out, module(x), rtol=0, atol=1e-6)


def test_fused_forward_matches_peft_lora_in_every_adapter_state(tiny_model):
    peft_model = lora_model(tiny_model, "qwen2")
    # a second adapter on q_proj only: k/v list it as active but have no weights for it
    peft_model.add_adapter("q_only", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.base_model.set_adapter(["default", "q_only"])
    x = inputs()
    fused = fuse_all(peft_model)

    def check(lora_adds: bool, merged: nn.Module | None = None) -> None:
        """fused_forward == each module's forward, which differs from its base layer's iff LoRA adds."""
        for f, group in fused:
            assert is_intact(f, group) and adapters_supported(group)
            x = inputs(group=group)
            for out, module in zip(fused_forward(f, group, x), group):
                torch.testing.assert_close(out, module(x), rtol=0, atol=1e-6)
                adds = (out - base_linear(module)(x)).abs().max().item() > 1e-3
                assert adds == (lora_adds and module is not merged)

    check(lora_adds=True)
    with peft_model.disable_adapter():
        check(lora_adds=False)

    q_proj = projection_groups(peft_model)[0][0]
    with_lora = q_proj(x)
    q_proj.merge()  # in place: the weight stays a slice of the buffer, which now holds W + BA
    check(lora_adds=True, merged=q_proj)
    torch.testing.assert_close(fused_forward(*fused[0], x)[0], with_lora, rtol=0, atol=1e-5)
    q_proj.unmerge()
    check(lora_adds=True)


def test_bf16_model_with_fp32_adapters_matches_peft_casts(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3", torch.bfloat16)
    q_proj = projection_groups(peft_model)[0][0]
    assert q_proj.base_layer.weight.dtype == torch.bfloat16
    assert q_proj.lora_A["default"].weight.dtype == torch.float32  # PEFT's autocast_adapter_dtype
    x = inputs(torch.bfloat16)
    # one module: the same GEMM as its base layer, so any difference would come from the adapter casts
    single = fuse_weights([q_proj])
    (out,) = fused_forward(single, [q_proj], x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, q_proj(x))
    for fused, group in fuse_all(peft_model)[1:]:
        x = inputs(torch.bfloat16, group)
        for out, module in zip(fused_forward(fused, group, x), group):
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out, module(x), rtol=2e-2, atol=2e-2)


def train_step(model: nn.Module) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = ids(9)
    loss = nn.functional.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("fuse_in_inference_mode", [False, True])
def test_training_through_fused_weights_matches_unfused_and_updates_the_buffer(
    tiny_model, fuse_in_inference_mode
):
    model = tiny_model("qwen2").train()
    reference = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.inference_mode(fuse_in_inference_mode):
        fused = fuse_all(model)
    for f, _ in fused:
        assert not f.weight.is_inference() and not f.weight.requires_grad
    train_step(model)
    train_step(reference)

    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        assert not torch.equal(p, before[name]), f"{name} did not train"
        torch.testing.assert_close(p, ref, rtol=0, atol=1e-6)
    for f, group in fused:
        assert is_intact(f, group)  # AdamW updates in place: the buffer sees the step
        torch.testing.assert_close(torch.cat([m.weight for m in group]), f.weight, rtol=0, atol=0)
        if f.bias is not None:
            torch.testing.assert_close(torch.cat([m.bias for m in group]), f.bias, rtol=0, atol=0)


def test_is_intact_until_a_weight_is_replaced(tiny_model):
    model = tiny_model("qwen2")
    fused = fuse_all(model)
    model.load_state_dict(copy.deepcopy(tiny_model("qwen2", seed=5).state_dict()))  # copies in place
    assert all(is_intact(f, g) for f, g in fused)
    (f, (q, k, v)), (f_mlp, mlp) = fused[0], fused[2]  # q/k/v, gate/up
    assert torch.equal(f.weight[: q.out_features], q.weight)

    v.weight.data = v.weight.data.clone()
    assert not is_intact(f, [q, k, v])
    fused_again = fuse_weights([q, k, v])  # the engine's recovery: re-fuse
    assert is_intact(fused_again, [q, k, v])
    k.bias.data = k.bias.data.clone()
    assert not is_intact(fused_again, [q, k, v])
    assert not is_intact(f_mlp, mlp[:1])  # not the modules it was made for

    model.to(torch.float64)
    assert not any(is_intact(f, g) for f, g in fused[1:])


def test_a_safe_merge_is_seen_whether_it_copies_in_place_or_replaces_the_weight(tiny_model):
    # PEFT < 0.22 replaced ``weight.data`` on a safe merge; 0.22 copies the merged values in place
    peft_model = lora_model(tiny_model, "qwen3")
    f, group = fuse_all(peft_model)[0]
    k = group[1].base_layer.weight
    group[1].merge(safe_merge=True)
    in_place = k.data_ptr() == f.weight[group[0].out_features :].data_ptr()
    assert is_intact(f, group) == in_place
    if in_place:
        torch.testing.assert_close(f.weight[group[0].out_features :][: k.shape[0]], k, rtol=0, atol=0)


def test_modules_that_cannot_share_a_gemm_are_left_alone(tiny_model):
    model = tiny_model("qwen3")
    layer = model.model.layers[0]
    with_bias, without_bias = nn.Linear(64, 8, bias=True), nn.Linear(64, 8, bias=False)
    half = nn.Linear(64, 8).to(torch.float16)
    cases = [
        [layer.self_attn.q_proj, layer.mlp.down_proj],  # in_features 64 vs 128
        [with_bias, without_bias],
        [layer.self_attn.q_proj, half],
        [layer.self_attn.q_proj, layer.self_attn.q_proj],
        [layer.self_attn.q_proj, nn.Conv1d(64, 8, 1)],
        [],
    ]
    for modules in cases:
        ptrs = [p.data_ptr() for m in modules for p in m.parameters()]
        assert fuse_weights(modules) is None
        assert [p.data_ptr() for m in modules for p in m.parameters()] == ptrs
    assert base_linear(layer.self_attn.q_norm) is None


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # gate/up have no bias to merge into
def test_adapters_supported_only_where_fused_forward_is_exact(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3")
    group = projection_groups(peft_model)[0]
    assert adapters_supported(group)
    group[0].merge()
    with peft_model.disable_adapter():  # PEFT's forward would unmerge q_proj in place
        assert not adapters_supported(group)
    group[0].unmerge()
    handle = group[2].register_forward_hook(lambda module, args, out: out * 2)
    assert not adapters_supported(group)
    handle.remove()

    for variant in (dict(use_dora=True), dict(lora_bias=True)):
        groups = projection_groups(lora_model(tiny_model, "qwen2", **variant))
        assert base_linear(groups[0][0]) is not None and fuse_weights(groups[0]) is not None
        assert not adapters_supported(groups[0]), variant


def test_fused_forward_traces_in_one_graph(tiny_model):
    peft_model = lora_model(tiny_model, "qwen2")
    f, group = fuse_all(peft_model)[0]
    compiled = torch.compile(lambda x: fused_forward(f, group, x), backend="eager", fullgraph=True)
    x = inputs()
    for out, module in zip(compiled(x), group):
        torch.testing.assert_close(out, module(x), rtol=0, atol=1e-6)


def test_save_pretrained_after_fusing_round_trips(tiny_model, tmp_path):
    model = tiny_model("qwen2")
    fuse_all(model)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def assert_each_group_matches_its_modules(fused) -> None:
    """``fused_forward`` of every group equals its modules' own forward (PEFT's, for LoRA layers)."""
    for f, group in fused:
        x = inputs(group=group)
        for out, module in zip(fused_forward(f, group, x), group):
            torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)


def stacked(fused):
    """Each group with its adapters stacked as the engine does before a generate."""
    for f, group in fused:
        f.lora = stack_adapters(f, group)
    return fused


def test_stacked_adapters_match_peft_in_every_adapter_state(tiny_model):
    peft_model = lora_model(tiny_model, "qwen2", lora_dropout=0.1).eval()  # eval: dropout is the identity
    # a second adapter on q_proj only: k/v list it as active but have no weights for it
    peft_model.add_adapter("q_only", LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.base_model.set_adapter(["default", "q_only"])
    x = inputs()

    def check(expect_stack: bool) -> None:
        for f, group in stacked(fuse_all(peft_model)):
            assert (f.lora is not None) == expect_stack
            x = inputs(group=group)
            for out, module in zip(fused_forward(f, group, x), group):
                torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)

    check(expect_stack=True)
    f, group = stacked(fuse_all(peft_model))[0]
    assert [(i, name, r) for i, name, r in f.lora.layout] == [(0, "default", 4), (0, "q_only", 2), (1, "default", 4), (2, "default", 4)]
    assert f.lora.a.shape == (14, 64) and f.lora.b.shape == (sum(f.sizes), 14)
    with peft_model.disable_adapter():
        check(expect_stack=False)  # nothing adds: the plain fused GEMM
    q_proj = projection_groups(peft_model)[0][0]
    q_proj.merge()  # q's adapters now live in its weight; k's and v's still add
    f, group = stacked(fuse_all(peft_model))[0]
    assert [i for i, _, _ in f.lora.layout] == [1, 2]
    for out, module in zip(fused_forward(f, group, x), group):
        torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)


def test_stacked_adapters_where_only_some_projections_have_lora(tiny_model):
    model = tiny_model("qwen3")
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    )
    for f, group in stacked(fuse_all(peft_model)):
        x = inputs(group=group)
        outs = fused_forward(f, group, x)
        for out, module in zip(outs, group):
            torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)
        plain = [i for i, m in enumerate(group) if type(m) is nn.Linear]  # k_proj, gate_proj: zero rows
        if len(plain) == len(group):  # o_proj, down_proj: no adapter, nothing stacked
            assert f.lora is None
            continue
        rows = [sum(f.sizes[:i]) for i in plain]
        assert all(not f.lora.b[r : r + f.sizes[i]].any() for r, i in zip(rows, plain))


def test_stacked_adapters_follow_a_training_step_in_place(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3")
    fused = stacked(fuse_all(peft_model))
    pointers = [(f.lora.a.data_ptr(), f.lora.b.data_ptr()) for f, _ in fused]
    x = inputs()
    train_step(peft_model)
    f, group = fused[0]
    stale = fused_forward(f, group, x)[0]
    assert not torch.allclose(stale, group[0](x), atol=1e-4), "the stack is a copy: stale until refreshed"
    stacked(fused)  # what the engine does before each generate
    assert [(f.lora.a.data_ptr(), f.lora.b.data_ptr()) for f, _ in fused] == pointers  # graphs stay valid
    assert_each_group_matches_its_modules(fused)


def test_stacked_adapters_keep_the_adapter_dtype_on_a_bf16_model(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3", torch.bfloat16)
    for f, group in stacked(fuse_all(peft_model)):
        assert f.lora.a.dtype == torch.float32 and f.lora.b.dtype == torch.float32
        x = inputs(torch.bfloat16, group)
        for out, module in zip(fused_forward(f, group, x), group):
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out, module(x), rtol=2e-2, atol=2e-2)


def test_stacked_adapters_in_the_model_dtype_on_a_bf16_model(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3", torch.bfloat16)
    for f, group in fuse_all(peft_model):
        x = inputs(torch.bfloat16, group)
        f.lora = stack_adapters(f, group, torch.bfloat16)  # EngineConfig.adapter_dtype = "model"
        assert f.lora.a.dtype == torch.bfloat16 and f.lora.b.dtype == torch.bfloat16
        in_bf16 = fused_forward(f, group, x)
        f.lora = stack_adapters(f, group)  # the adapters' own fp32: new buffers, as the dtype changed
        assert f.lora.a.dtype == torch.float32
        for out, exact, module in zip(in_bf16, fused_forward(f, group, x), group):
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out, module(x), rtol=2e-2, atol=2e-2)
            # the adapter's contribution rounded to bf16 once more: a bf16 ulp or two of the output
            assert float((out.float() - exact.float()).abs().max()) <= 2 * 2**-7 * float(exact.float().abs().max())


def test_engine_config_checks_the_adapter_dtype():
    with pytest.raises(ValueError, match="adapter_dtype must be adapter|model"):
        EngineConfig(adapter_dtype="bf16")


@pytest.mark.parametrize("room", [False, True])  # True: the folded path
def test_stacked_forward_traces_in_one_graph(tiny_model, room):
    peft_model = lora_model(tiny_model, "qwen2")
    f, group = stacked(fuse_all_with_room(peft_model) if room else fuse_all(peft_model))[0]
    assert f.lora.folded == room
    compiled = torch.compile(lambda x: fused_forward(f, group, x), backend="eager", fullgraph=True)
    x = inputs()
    for out, module in zip(compiled(x), group):
        torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-5)


def fuse_all_with_room(model: nn.Module) -> list[tuple[object, list[nn.Module]]]:
    """As the engine fuses when the adapters share the weights' dtype: spare rows for the stacked A."""
    return [(fuse_weights(group, spare_rows=stacked_rank(group)), group) for group in projection_groups(model)]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])  # qwen2: biased q/k/v (zeros for the spare rows)
def test_folded_adapters_match_peft_and_follow_a_training_step(tiny_model, arch):
    peft_model = lora_model(tiny_model, arch)  # fp32 weights and fp32 adapters: they fold
    fused = stacked(fuse_all_with_room(peft_model))
    for f, group in fused:
        assert f.lora.folded and f.spare_rows == f.lora.a.shape[0]
        assert f.lora.a.data_ptr() == f.buffer[sum(f.sizes)].data_ptr(), "A lives below the weights"
        assert is_intact(f, group)
    assert_each_group_matches_its_modules(fused)
    pointers = [f.lora.a.data_ptr() for f, _ in fused]
    train_step(peft_model)
    stacked(fused)  # refilled in place: a captured graph keeps reading the same rows
    assert [f.lora.a.data_ptr() for f, _ in fused] == pointers
    assert_each_group_matches_its_modules(fused)


def test_folded_bf16_adapters_compute_what_the_unfolded_stack_does(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3", torch.bfloat16)
    for f, group in fuse_all_with_room(peft_model):
        x = inputs(torch.bfloat16, group)
        f.lora = stack_adapters(f, group, torch.float32)  # the adapters' dtype is not the weights': no fold
        assert not f.lora.folded
        f.lora = stack_adapters(f, group, torch.bfloat16)
        assert f.lora.folded
        folded = fused_forward(f, group, x)
        f.lora.folded = False  # the same bf16 copies, as two GEMMs of their own
        for a, b, module in zip(folded, fused_forward(f, group, x), group):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-2)  # the GEMM's blocking may round apart
            torch.testing.assert_close(a, module(x), rtol=2e-2, atol=2e-2)


def test_without_room_the_stack_is_not_folded(tiny_model):
    peft_model = lora_model(tiny_model, "qwen3")
    for f, _ in stacked(fuse_all(peft_model)):
        assert f.spare_rows == 0 and not f.lora.folded
