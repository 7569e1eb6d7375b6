"""Stage 3: the GPT architecture, checked against PyTorch's own modules, hand-derived parameter
counts, Hugging Face's GPT-2 (built from a config only, no download) and a stub model."""
import math
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import (GELU, GPT_124M_CONFIG, GPT_FAMILY, FeedForward, GPTModel, LayerNorm,
                     TransformerBlock, check_config, generate_text_simple)

SMALL_CFG = {"vocab_size": 97, "context_length": 16, "emb_dim": 24, "n_heads": 4,
             "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False}


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def meta_model(cfg, tie=False):
    with torch.device("meta"):
        model = GPTModel(cfg)
    if tie:
        model.out_head.weight = model.tok_emb.weight
    return model


def small_model(seed=123, **overrides):
    torch.manual_seed(seed)
    return GPTModel({**SMALL_CFG, **overrides}).eval()


# --- LayerNorm and GELU against PyTorch ------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5), (3, 7, 64), (1, 4, 768)])
def test_layernorm_matches_torch(shape):
    torch.manual_seed(0)
    x = 3 * torch.randn(shape) + 1.5
    ours = LayerNorm(shape[-1])
    with torch.no_grad():  # non-trivial scale and shift
        ours.scale.copy_(torch.randn(shape[-1]))
        ours.shift.copy_(torch.randn(shape[-1]))
    # the formula, by hand in float64: an independent reference, not another call to F.layer_norm
    x64 = x.double()
    mean = x64.mean(-1, keepdim=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdim=True)  # biased variance
    expected = (x64 - mean) / torch.sqrt(var + 1e-5) * ours.scale.double() + ours.shift.double()
    torch.testing.assert_close(ours(x).double(), expected, atol=2e-5, rtol=0)


def test_layernorm_uses_biased_variance():
    """With unbiased variance a 2-feature token would not come out as exactly +-1."""
    out = LayerNorm(2, eps=0.0)(torch.tensor([[1.0, 3.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0]]))


def test_layernorm_parameters_are_trainable_scale_and_shift():
    ln = LayerNorm(8)
    assert dict(ln.named_parameters()).keys() == {"scale", "shift"}
    assert torch.equal(ln.scale, torch.ones(8)) and torch.equal(ln.shift, torch.zeros(8))


def test_gelu_is_the_tanh_formula_and_close_to_the_exact_gelu():
    x = torch.linspace(-10, 10, 10_001, dtype=torch.float64)
    tanh_formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(GELU()(x.float()).double(), tanh_formula, atol=1e-5, rtol=0)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # the GELU the approximation approximates
    assert (GELU()(x.float()).double() - exact).abs().max() < 1e-3


def test_gelu_hand_computed_values():
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) by hand: GELU(0) = 0, GELU(1) = 0.8412
    torch.testing.assert_close(GELU()(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 0.841192]),
                               atol=1e-6, rtol=0)


def test_feedforward_expands_four_times_and_keeps_shape():
    ff = FeedForward(SMALL_CFG)
    d = SMALL_CFG["emb_dim"]
    assert ff.layers[0].weight.shape == (4 * d, d) and ff.layers[2].weight.shape == (d, 4 * d)
    assert isinstance(ff.layers[1], GELU)
    assert ff(torch.rand(3, 5, d)).shape == (3, 5, d)


# --- parameter counts -------------------------------------------------------------------------

def test_124m_parameter_counts():
    assert count_params(meta_model(GPT_124M_CONFIG)) == 163_009_536
    assert count_params(meta_model(GPT_124M_CONFIG, tie=True)) == 124_412_160


def test_block_parameter_count_is_12d2_plus_10d():
    d = GPT_124M_CONFIG["emb_dim"]
    with torch.device("meta"):
        block = TransformerBlock(GPT_124M_CONFIG)
    assert count_params(block) == 12 * d**2 + 10 * d == 7_085_568


@pytest.mark.parametrize("name", list(GPT_FAMILY))
def test_family_counts_match_hugging_face_gpt2(name):
    """Our model with OpenAI's QKV biases and tied weights has exactly as many parameters as
    transformers' GPT2LMHeadModel of the same size (built on meta: no download, no memory)."""
    transformers = pytest.importorskip("transformers")
    sizes = GPT_FAMILY[name]
    hf_config = transformers.GPT2Config(n_embd=sizes["emb_dim"], n_layer=sizes["n_layers"],
                                        n_head=sizes["n_heads"])
    with torch.device("meta"):
        hf_model = transformers.GPT2LMHeadModel(hf_config)
    ours = meta_model({**GPT_124M_CONFIG, **sizes, "qkv_bias": True}, tie=True)
    assert count_params(ours) == count_params(hf_model)


def test_family_names_are_the_openai_sizes():
    for name, sizes in GPT_FAMILY.items():
        n = count_params(meta_model({**GPT_124M_CONFIG, **sizes, "qkv_bias": True}, tie=True))
        assert name.endswith(f"({round(n / 1e6)}M)")


# --- forward pass -----------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size,num_tokens", [(1, 1), (2, 5), (7, 16)])
def test_forward_shapes(batch_size, num_tokens):
    model = small_model()
    idx = torch.randint(0, SMALL_CFG["vocab_size"], (batch_size, num_tokens))
    assert model(idx).shape == (batch_size, num_tokens, SMALL_CFG["vocab_size"])


def test_124m_forward_shape():
    torch.manual_seed(123)
    model = GPTModel(GPT_124M_CONFIG).eval()
    with torch.no_grad():
        logits = model(torch.tensor([[6109, 3626, 6100, 345], [6109, 1110, 6622, 257]]))
    assert logits.shape == (2, 4, 50257)
    assert torch.isfinite(logits).all()


def test_block_keeps_shape():
    block = TransformerBlock(SMALL_CFG)
    x = torch.rand(3, 6, SMALL_CFG["emb_dim"])
    assert block(x).shape == x.shape


def test_model_is_causal():
    """Changing a later token must not change the logits at any earlier position."""
    model = small_model()
    idx = torch.randint(0, SMALL_CFG["vocab_size"], (2, 10))
    changed = idx.clone()
    changed[:, 6] = (changed[:, 6] + 1) % SMALL_CFG["vocab_size"]
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = small_model(drop_rate=0.5)
    idx = torch.randint(0, SMALL_CFG["vocab_size"], (2, 8))
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
        model.train()
        assert not torch.equal(model(idx), model(idx))


def test_module_names_that_weight_loading_relies_on():
    keys = set(small_model().state_dict())
    for key in ["tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift",
                "out_head.weight", "trf_blocks.1.att.W_query.weight", "trf_blocks.1.att.out_proj.bias",
                "trf_blocks.1.ff.layers.0.weight", "trf_blocks.1.ff.layers.2.bias",
                "trf_blocks.1.norm1.scale", "trf_blocks.1.norm2.shift"]:
        assert key in keys, key
    assert "out_head.bias" not in keys


def test_too_long_input_fails_with_a_clear_message():
    model = small_model()
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_unbatched_input_fails_with_a_clear_message():
    with pytest.raises(ValueError, match="unsqueeze"):
        small_model()(torch.zeros(5, dtype=torch.long))


def test_empty_input_fails_with_a_clear_message():
    # Without the check, an empty sequence gives empty logits silently, and generation fails
    # later inside torch.argmax with an error about a zero-size dimension.
    with pytest.raises(ValueError, match=r"no tokens \(shape \(2, 0\)\).*<\|endoftext\|>"):
        small_model()(torch.zeros(2, 0, dtype=torch.long))


def test_generate_on_an_empty_prompt_fails_where_the_prompt_is_given():
    with pytest.raises(ValueError, match="no tokens"):
        generate_text_simple(small_model(), torch.zeros(1, 0, dtype=torch.long), 3,
                             context_size=SMALL_CFG["context_length"])


# --- bad configs fail at build time, naming the key ---------------------------------------------

@pytest.mark.parametrize("key", list(GPT_124M_CONFIG))
def test_missing_key_is_named(key):
    cfg = {k: v for k, v in GPT_124M_CONFIG.items() if k != key}
    with pytest.raises(ValueError, match=f"'{key}'"):
        GPTModel(cfg)


@pytest.mark.parametrize("key,value", [
    ("vocab_size", 0), ("context_length", -1), ("emb_dim", 76.8), ("n_heads", "12"),
    ("n_layers", True), ("drop_rate", 1.0), ("drop_rate", -0.1), ("drop_rate", "0.1"),
    ("qkv_bias", 0), ("qkv_bias", "False"),
])
def test_wrong_value_is_named(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        GPTModel({**SMALL_CFG, key: value})


def test_emb_dim_not_divisible_by_n_heads_is_named():
    with pytest.raises(ValueError, match=r"cfg\['emb_dim'\] \(768\).*cfg\['n_heads'\] \(10\)"):
        GPTModel({**GPT_124M_CONFIG, "n_heads": 10})


def test_good_configs_pass():
    check_config(GPT_124M_CONFIG)
    check_config({**SMALL_CFG, "drop_rate": 0})  # an int rate of 0 is fine
    for sizes in GPT_FAMILY.values():
        check_config({**GPT_124M_CONFIG, **sizes})


# --- generate_text_simple ---------------------------------------------------------------------

class CountingModel(nn.Module):
    """Stub whose favourite next token is (last token + 1) mod vocab; records its inputs."""

    def __init__(self, vocab_size=50):
        super().__init__()
        self.vocab_size = vocab_size
        self.inputs = []

    def forward(self, idx):
        self.inputs.append(idx.clone())
        return F.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float()


def test_generate_is_greedy_and_appends_max_new_tokens():
    stub = CountingModel()
    out = generate_text_simple(stub, torch.tensor([[3, 4], [10, 48]]), max_new_tokens=4, context_size=8)
    assert out.tolist() == [[3, 4, 5, 6, 7, 8], [10, 48, 49, 0, 1, 2]]


def test_generate_crops_the_context():
    stub = CountingModel()
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = generate_text_simple(stub, prompt, max_new_tokens=5, context_size=4)
    assert out.shape == (1, 11)
    assert [x.shape[1] for x in stub.inputs] == [4, 4, 4, 4, 4]
    for step, seen in enumerate(stub.inputs):  # always the LAST 4 tokens so far
        assert seen.tolist() == out[:, 6 + step - 4:6 + step].tolist()


def test_generate_with_a_real_model_beyond_its_context():
    model = small_model()
    prompt = torch.randint(0, SMALL_CFG["vocab_size"], (2, 3))
    out = generate_text_simple(model, prompt, max_new_tokens=20, context_size=SMALL_CFG["context_length"])
    assert out.shape == (2, 23)
    assert torch.equal(out[:, :3], prompt)


def test_generate_zero_tokens_returns_the_prompt():
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate_text_simple(CountingModel(), prompt, 0, context_size=4), prompt)


def test_generate_rejects_a_non_positive_context_size():
    with pytest.raises(ValueError, match="context_size"):
        generate_text_simple(CountingModel(), torch.tensor([[1, 2]]), 3, context_size=0)
