"""LoRA (finetune/LLM-finetune-lora.ipynb, exported to course/ch6c_lora.py), checked against the
model it adapts and against LoRA's formula written out by hand: with B = 0 it is the base model
exactly, merging changes nothing but rounding, only A and B train, bad ranks and layer names fail
clearly before the model is touched."""
import copy

import pytest
import torch
import torch.nn as nn

from course.ch3_architecture import GPTModel
from course.ch5b_modern import SMOLLM2_135M_CONFIG, LlamaModel
from course.ch6a_classification import TopLayers, make_classifier
from course.ch6c_lora import LORA_TARGETS, LinearWithLoRA, LoRALayer, add_lora, matches, merge_lora, trainable_top

CFG = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": True}  # biases everywhere, so merging must keep them


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def token_ids(seed=1):
    return torch.randint(0, CFG["vocab_size"], (3, CFG["context_length"]), generator=torch.Generator().manual_seed(seed))


def randomize_lora(model, seed=2):
    """Give every B (and A) non-zero values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALayer):
                module.A.copy_(torch.randn(module.A.shape, generator=generator) * 0.1)
                module.B.copy_(torch.randn(module.B.shape, generator=generator) * 0.1)


def test_with_b_zero_the_lora_model_is_the_base_model_exactly():
    base = tiny_model()
    lora = copy.deepcopy(base)
    wrapped = add_lora(lora, rank=4, alpha=8)
    assert len(wrapped) == 6 * CFG["n_layers"]
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(lora(ids), base(ids))


def test_a_lora_layer_computes_its_formula():
    torch.manual_seed(0)
    linear = nn.Linear(12, 10)
    layer = LinearWithLoRA(linear, rank=3, alpha=6)
    randomize_lora(layer)
    x = torch.randn(4, 5, 12)
    W, b, A, B = linear.weight, linear.bias, layer.lora.A, layer.lora.B
    expected = torch.einsum("...i,oi->...o", x, W) + b + (6 / 3) * torch.einsum("...i,ri,or->...o", x, A, B)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert layer.lora.delta_weight().shape == W.shape
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 3 * (12 + 10)


def test_merged_and_unmerged_models_agree():
    model = tiny_model()
    add_lora(model, rank=4, alpha=8)
    randomize_lora(model)
    ids = token_ids()
    with torch.no_grad():
        unmerged = model(ids)
        expected_weight = (model.trf_blocks[0].att.W_query.linear.weight
                           + (8 / 4) * model.trf_blocks[0].att.W_query.lora.B @ model.trf_blocks[0].att.W_query.lora.A)
        merge_lora(model)
        merged = model(ids)
    assert not any(isinstance(m, (LinearWithLoRA, LoRALayer)) for m in model.modules())
    assert type(model.trf_blocks[0].att.W_query) is nn.Linear and model.trf_blocks[0].att.W_query.bias is not None
    torch.testing.assert_close(model.trf_blocks[0].att.W_query.weight, expected_weight)
    assert not torch.allclose(merged, tiny_model()(ids), atol=1e-3)  # the update is really there
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in tiny_model().parameters())


def test_only_the_lora_matrices_receive_gradients_and_the_base_stays_frozen():
    model = tiny_model().train()
    add_lora(model, rank=4, alpha=8, targets=LORA_TARGETS["attention"])
    before = {name: p.detach().clone() for name, p in model.named_parameters() if ".lora." not in name}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the first step moves B away from zero, so the second reaches A too
        optimizer.zero_grad()
        model(token_ids()).logsumexp(-1).mean().backward()
        optimizer.step()
    for name, param in model.named_parameters():
        is_lora = ".lora.A" in name or ".lora.B" in name
        assert param.requires_grad == is_lora, name
        assert (param.grad is not None) == is_lora, name
        if is_lora:
            assert param.grad.abs().sum() > 0, f"{name} got a zero gradient"
    for name, value in before.items():
        assert torch.equal(dict(model.named_parameters())[name], value), f"{name} changed"


LLAMA_CFG = {**SMOLLM2_135M_CONFIG, "vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4,
             "n_kv_heads": 2, "n_layers": 2, "hidden_dim": 48}


@pytest.mark.parametrize("targets, per_block", [(LORA_TARGETS["attention"], 4), (LORA_TARGETS["feed_forward"], 2),
                                                (LORA_TARGETS["all_linear"], 6),
                                                (["W_query"], 1), (["trf_blocks.1.ff.layers.2"], None)])
def test_the_targets_choose_the_layers(targets, per_block):
    model = tiny_model()
    wrapped = add_lora(model, rank=2, alpha=2, targets=targets)
    assert len(wrapped) == (1 if per_block is None else per_block * CFG["n_layers"])
    assert all(isinstance(model.get_submodule(name), LinearWithLoRA) for name in wrapped)
    assert type(model.out_head) is nn.Linear  # the head is never wrapped by the presets


@pytest.mark.parametrize("preset, names", [("attention", {"att.W_query", "att.W_key", "att.W_value", "att.out_proj"}),
                                           ("feed_forward", {"ff.gate", "ff.up", "ff.down"})])
def test_the_same_presets_choose_smollm2s_layers(preset, names):
    torch.manual_seed(0)
    model = LlamaModel(LLAMA_CFG)
    wrapped = add_lora(model, rank=2, alpha=2, targets=LORA_TARGETS[preset])
    assert set(wrapped) == {f"trf_blocks.{i}.{name}" for i in range(LLAMA_CFG["n_layers"]) for name in names}


def test_matches_by_name_end_or_enclosing_module():
    assert matches("trf_blocks.0.att.W_query", "att.W_query") and matches("trf_blocks.0.att.W_query", "W_query")
    assert matches("trf_blocks.0.att.W_query", "att") and matches("trf_blocks.3.ff.layers.0", "ff")
    assert not matches("trf_blocks.0.att.W_query", "W_q") and not matches("trf_blocks.0.attention.W_query", "att")
    assert not matches("out_head", "ff")


def test_lora_on_smollm2s_blocks_starts_as_the_base_and_merges_back():
    torch.manual_seed(0)
    base = LlamaModel(LLAMA_CFG).eval()
    lora = copy.deepcopy(base)
    add_lora(lora, rank=4, alpha=8)
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(lora(ids), base(ids))
        randomize_lora(lora)
        unmerged = lora(ids)
        merge_lora(lora)
        torch.testing.assert_close(lora(ids), unmerged, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(unmerged, base(ids), atol=1e-3)


@pytest.mark.parametrize("lora", [None, {"rank": 4, "alpha": 8}])
def test_trainable_top_copies_the_top_layers_with_a_new_head(lora):
    torch.manual_seed(0)
    model = make_classifier(LlamaModel(LLAMA_CFG).eval(), trainable_blocks=1)
    top = trainable_top(model, 1, seed=5, lora=lora)
    again = trainable_top(model, 1, seed=5, lora=lora)
    assert torch.equal(top.out_head.weight, again.out_head.weight)  # the head's draw follows the seed
    assert top.trf_blocks[0] is not model.trf_blocks[1]  # a copy: training it leaves the model alone
    assert top.whole[0] is model  # ... and only the top layers are copied, not the whole model
    trainable = {name for name, p in top.named_parameters() if p.requires_grad}
    if lora is None:
        assert trainable == {name for name, _ in top.named_parameters() if name.startswith(("trf_blocks.0.",
                                                                                            "final_norm.", "out_head."))}
    else:
        assert trainable == {name for name, _ in top.named_parameters()
                             if ".lora." in name or name.startswith("out_head.")}
        assert len([n for n in trainable if n.endswith(".lora.A")]) == 7  # SwiGLU: 4 attention + 3 feed-forward
    hidden = torch.randn(2, 5, LLAMA_CFG["emb_dim"])
    with torch.no_grad():  # before training, LoRA's top computes what the copied layers compute
        assert top(hidden).shape == (2, 5, 2)
        reference = TopLayers(model, 1)(hidden)
        copy_only = trainable_top(model, 1, seed=5)
        copy_only.out_head.load_state_dict(top.out_head.state_dict())
        assert torch.allclose(top(hidden), copy_only(hidden), atol=1e-6) and reference.shape == top(hidden).shape


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_a_rank_below_one_is_a_clear_error_and_leaves_the_model_alone(rank):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"rank must be a whole number >= 1 \(got rank="):
        add_lora(model, rank=rank, alpha=8)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())


def test_a_layer_name_that_does_not_exist_is_a_clear_error_and_leaves_the_model_alone():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"No nn.Linear layer of the model is named 'att.W_qeury'.*trf_blocks.0.att.W_query"):
        add_lora(model, rank=4, alpha=8, targets=["att.W_query", "att.W_qeury"])
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LinearWithLoRA) for m in model.modules())
    with pytest.raises(ValueError, match="No nn.Linear layer"):
        add_lora(model, rank=4, alpha=8, targets=["norm1"])  # a LayerNorm, not a linear layer


def test_adding_twice_or_merging_nothing_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="no LoRA layers to merge"):
        merge_lora(model)
    add_lora(model, rank=4, alpha=8)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, rank=4, alpha=8)
