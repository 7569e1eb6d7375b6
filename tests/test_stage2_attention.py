"""Stage 2: the course's MultiHeadAttention against independent references.

References: PyTorch's fused scaled_dot_product_attention (causal) and nn.MultiheadAttention, fed
the same weights (the explicit path, use_sdpa=False, is checked against them; the default fused
path against the explicit one, so no test compares the fused kernel with itself); the chapter notebook's MultiHeadAttentionWrapper (a loop of single heads) with
tied weights. Plus the contract the later chapters rely on: clear errors, the causal property,
dropout only in training mode, and the parameter names the GPT-2 weight loader fills.
"""
import ast
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import MultiHeadAttention
from notebook_tools import ROOT, code_cells, python_of

NOTEBOOK = ROOT / "attention" / "LLM_attention.ipynb"

# (batch, num_tokens, d_in, d_out, num_heads, context_length)
SHAPES = [
    (1, 1, 8, 8, 1, 4),
    (2, 5, 6, 12, 3, 5),
    (3, 16, 16, 16, 4, 32),
    (4, 33, 32, 64, 8, 64),
    (2, 7, 5, 6, 6, 10),
    (1, 64, 48, 48, 12, 64),
]


def make_mha(d_in, d_out, num_heads, context_length, dropout=0.0, qkv_bias=False, seed=0, use_sdpa=True):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias=qkv_bias,
                              use_sdpa=use_sdpa)


def sdpa_reference(mha, x):
    """The same projections, with the attention itself done by PyTorch's fused causal kernel."""
    b, t, _ = x.shape
    h, hd = mha.num_heads, mha.d_out // mha.num_heads

    def heads(linear):
        return linear(x).view(b, t, h, hd).transpose(1, 2)

    context = F.scaled_dot_product_attention(
        heads(mha.W_query), heads(mha.W_key), heads(mha.W_value), is_causal=True
    )
    return mha.out_proj(context.transpose(1, 2).reshape(b, t, mha.d_out))


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("b,t,d_in,d_out,num_heads,context_length", SHAPES)
def test_matches_pytorch_scaled_dot_product_attention(b, t, d_in, d_out, num_heads, context_length, qkv_bias):
    """The explicit masked softmax against PyTorch's fused kernel."""
    mha = make_mha(d_in, d_out, num_heads, context_length, dropout=0.1, qkv_bias=qkv_bias, use_sdpa=False).eval()
    torch.manual_seed(1)
    x = torch.randn(b, t, d_in)
    with torch.no_grad():
        out, ref = mha(x), sdpa_reference(mha, x)
    assert out.shape == (b, t, d_out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("b,t,d_in,d_out,num_heads,context_length", SHAPES)
def test_fused_path_equals_explicit_path(b, t, d_in, d_out, num_heads, context_length, qkv_bias):
    """The default (use_sdpa=True) against the explicit path, which the test above checks."""
    fused = make_mha(d_in, d_out, num_heads, context_length, dropout=0.1, qkv_bias=qkv_bias).eval()
    explicit = make_mha(d_in, d_out, num_heads, context_length, dropout=0.1, qkv_bias=qkv_bias, use_sdpa=False).eval()
    assert fused.use_sdpa and not explicit.use_sdpa
    explicit.load_state_dict(fused.state_dict())
    torch.manual_seed(1)
    x = torch.randn(b, t, d_in)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("b,t,d,num_heads", [(2, 9, 24, 4), (3, 20, 32, 8)])
def test_matches_nn_multihead_attention(b, t, d, num_heads, use_sdpa):
    """A second, independent implementation: torch.nn.MultiheadAttention with a causal mask."""
    mha = make_mha(d, d, num_heads, context_length=t, qkv_bias=True, use_sdpa=use_sdpa).eval()
    ref = nn.MultiheadAttention(d, num_heads, bias=True, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([mha.W_query.weight, mha.W_key.weight, mha.W_value.weight]))
        ref.in_proj_bias.copy_(torch.cat([mha.W_query.bias, mha.W_key.bias, mha.W_value.bias]))
        ref.out_proj.weight.copy_(mha.out_proj.weight)
        ref.out_proj.bias.copy_(mha.out_proj.bias)
        torch.manual_seed(2)
        x = torch.randn(b, t, d)
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        expected, _ = ref(x, x, x, attn_mask=future, need_weights=False)
        torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_matches_hand_computed_single_head(use_sdpa):
    """One head, identity projections, no output projection: the weights are softmax(x x^T / sqrt(d))
    over the past, computed here row by row with plain Python arithmetic."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    mha = MultiHeadAttention(2, 2, context_length=3, dropout=0.0, num_heads=1, use_sdpa=use_sdpa)
    with torch.no_grad():
        for layer in (mha.W_query, mha.W_key, mha.W_value, mha.out_proj):
            layer.weight.copy_(torch.eye(2))
        mha.out_proj.bias.zero_()
        out = mha(x)[0]
    rows = x[0].tolist()
    for i in range(3):
        scores = [sum(a * b for a, b in zip(rows[i], rows[j])) / 2**0.5 for j in range(i + 1)]
        exps = [math.exp(s) for s in scores]
        weights = [e / sum(exps) for e in exps]
        expected = [sum(w * rows[j][d] for j, w in enumerate(weights)) for d in range(2)]
        assert out[i].tolist() == pytest.approx(expected, abs=1e-6)


def notebook_classes(*names):
    """The classes (and functions) as the chapter notebook teaches them (only their definitions run)."""
    namespace = {"torch": torch, "nn": nn, "F": F, "MultiHeadAttention": MultiHeadAttention}
    for cell in code_cells(NOTEBOOK):
        for node in ast.parse(python_of(cell)).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names:
                exec(compile(ast.Module(body=[node], type_ignores=[]), str(NOTEBOOK), "exec"), namespace)
    missing = [name for name in names if name not in namespace]
    assert not missing, f"the notebook does not define {missing}"
    return [namespace[name] for name in names]


@pytest.mark.parametrize("num_heads,head_dim,t", [(1, 4, 5), (2, 3, 6), (4, 8, 11)])
def test_wrapper_equals_efficient_mha_with_tied_weights(num_heads, head_dim, t):
    CausalAttention, Wrapper = notebook_classes("CausalAttention", "MultiHeadAttentionWrapper")
    d_in = 7
    torch.manual_seed(3)
    wrapper = Wrapper(d_in, head_dim, t, 0.0, num_heads).eval()
    mha = make_mha(d_in, num_heads * head_dim, num_heads, t).eval()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(mha, name).weight.copy_(torch.cat([getattr(h, name).weight for h in wrapper.heads]))
        mha.out_proj.weight.copy_(torch.eye(num_heads * head_dim))
        mha.out_proj.bias.zero_()
        x = torch.randn(3, t, d_in)
        torch.testing.assert_close(mha(x), wrapper(x), atol=1e-6, rtol=1e-5)


def test_notebook_tie_weights_works_with_gradients_on():
    """The notebook switches gradients off; its tie_weights must not depend on that."""
    _, Wrapper, tie_weights = notebook_classes("CausalAttention", "MultiHeadAttentionWrapper", "tie_weights")
    torch.manual_seed(5)
    with torch.enable_grad():
        wrapper = Wrapper(5, 3, 6, 0.0, 2).eval()
        mha = make_mha(5, 6, 2, 6).eval()
        tie_weights(wrapper, mha)  # an in-place copy into parameters that require grad
        with torch.no_grad():
            mha.out_proj.weight.copy_(torch.eye(6))
            mha.out_proj.bias.zero_()
        x = torch.randn(2, 6, 5)
        torch.testing.assert_close(mha(x), wrapper(x), atol=1e-6, rtol=1e-5)
    assert mha.W_query.weight.requires_grad


def test_notebook_sdpa_variant_matches():
    """The notebook's fused subclass computes what MultiHeadAttention computes."""
    (Fused,) = notebook_classes("MultiHeadAttentionSDPA")
    mha = make_mha(16, 16, 4, 12).eval()
    fused = Fused(16, 16, 12, 0.0, 4).eval()
    fused.load_state_dict(mha.state_dict())
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), mha(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d_out,num_heads", [(5, 2), (768, 10), (6, 4)])
def test_num_heads_must_divide_d_out(d_out, num_heads):
    with pytest.raises(ValueError, match=rf"d_out \({d_out}\) must be divisible by num_heads \({num_heads}\)"):
        MultiHeadAttention(4, d_out, 8, 0.0, num_heads)


def test_too_long_input_is_a_clear_error():
    mha = make_mha(4, 4, 2, context_length=6)
    mha(torch.randn(2, 6, 4))  # exactly context_length tokens is fine
    with pytest.raises(ValueError, match=r"7 tokens .* context_length=6"):
        mha(torch.randn(2, 7, 4))


@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("num_heads", [1, 3])
def test_causal_changing_a_future_token_never_changes_the_past(num_heads, use_sdpa):
    t = 9
    mha = make_mha(6, 12, num_heads, context_length=t, use_sdpa=use_sdpa).eval()
    torch.manual_seed(4)
    x = torch.randn(2, t, 6)
    with torch.no_grad():
        base = mha(x)
        for pos in range(t):
            changed = x.clone()
            changed[:, pos:] = torch.randn(2, t - pos, 6) * 5  # rewrite token pos and everything after
            out = mha(changed)
            torch.testing.assert_close(out[:, :pos], base[:, :pos], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, pos], base[:, pos]), "the changed position itself must change"


def test_an_earlier_token_does_change_later_outputs():
    """The mask hides only the future: without this, a module that ignored context would pass."""
    mha = make_mha(6, 6, 2, context_length=5).eval()
    torch.manual_seed(5)
    x = torch.randn(1, 5, 6)
    changed = x.clone()
    changed[:, 0] += 3.0
    with torch.no_grad():
        diff = (mha(changed) - mha(x))[0].abs().amax(dim=-1)
    assert (diff > 1e-4).all(), diff


def test_batch_rows_are_independent():
    mha = make_mha(8, 8, 2, context_length=10).eval()
    x = torch.randn(4, 10, 8)
    with torch.no_grad():
        together = mha(x)
        alone = torch.cat([mha(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)


def test_dropout_only_in_training_mode():
    mha = make_mha(8, 8, 2, context_length=10, dropout=0.5)
    no_dropout = make_mha(8, 8, 2, context_length=10, dropout=0.0)  # same seed: same weights
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        mha.eval()
        torch.testing.assert_close(mha(x), no_dropout(x))
        torch.testing.assert_close(mha(x), mha(x))
        mha.train()
        torch.manual_seed(6)
        first = mha(x)
        torch.manual_seed(7)
        second = mha(x)
    assert not torch.allclose(first, no_dropout(x)), "dropout must change the output in train mode"
    assert not torch.allclose(first, second), "different draws must drop different weights"


def test_state_dict_names_are_the_loaders_contract():
    """Chapter 5's GPT-2 loader fills these names; the mask is rebuilt, not saved."""
    mha = make_mha(8, 8, 2, context_length=10, qkv_bias=True)
    assert sorted(mha.state_dict()) == sorted([
        "W_query.weight", "W_query.bias", "W_key.weight", "W_key.bias",
        "W_value.weight", "W_value.bias", "out_proj.weight", "out_proj.bias",
    ])
    assert isinstance(mha.dropout, nn.Dropout)
    assert mha.mask.dtype == torch.bool and mha.mask.shape == (10, 10)
    assert [name for name, _ in mha.named_buffers()] == ["mask"]


def test_gradients_reach_every_parameter():
    mha = make_mha(8, 8, 2, context_length=10, qkv_bias=True)
    mha(torch.randn(2, 10, 8)).sum().backward()
    for name, p in mha.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
