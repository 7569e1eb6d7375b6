"""The fast paths change the speed, never the maths.

Each fast path is checked against an independent reference: the KV-cache generation against
recomputing the whole context (chapter 3's generate_text_simple), the fused attention against the
explicit masked softmax (which tests/test_stage2_attention.py checks against PyTorch's own
attention), the fused LayerNorm and GELU against their formulas computed here in float64, fused
AdamW against PyTorch's for-loop AdamW, the tied model against Hugging Face's GPT-2.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from helpers import (GELU, GPT_124M_CONFIG, GPTModel, GPTModelWithCache, KVCache, KVCachedModel, LayerNorm,
                     MultiHeadAttention, generate, generate_text_simple, load_gpt2_params, make_adamw)
from notebook_tools import ROOT

TINY = {"vocab_size": 60, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": True}


def tiny_model(seed=123, **overrides):
    torch.manual_seed(seed)
    return GPTModel({**TINY, **overrides}).eval()


def tiny_cached_model(seed=123, **overrides):
    """Chapter 4b's GPTModelWithCache with the weights of tiny_model(seed): the same parameters."""
    model = GPTModelWithCache({**TINY, **overrides}).eval()
    model.load_state_dict(tiny_model(seed, **overrides).state_dict())
    return model


def set_sdpa(model, use_sdpa):
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_sdpa = use_sdpa
    return model


class LayerNormFormula(LayerNorm):
    """Chapter 3's formula, in float64: an independent reference for the fused kernel."""

    def forward(self, x):
        x64 = x.double()
        mean = x64.mean(dim=-1, keepdim=True)
        var = ((x64 - mean) ** 2).mean(dim=-1, keepdim=True)
        out = self.scale.double() * (x64 - mean) / torch.sqrt(var + self.eps) + self.shift.double()
        return out.float()


class GELUFormula(GELU):
    def forward(self, x):
        x64 = x.double()
        out = 0.5 * x64 * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x64 + 0.044715 * x64**3)))
        return out.float()


def explicit_model(model):
    """The same model object with chapters 2-3's explicit formulas everywhere."""
    set_sdpa(model, False)
    for module in model.modules():
        if type(module) is LayerNorm:
            module.__class__ = LayerNormFormula
        elif type(module) is GELU:
            module.__class__ = GELUFormula
    return model


# --- KV-cache generation ------------------------------------------------------------------------

@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("prompt_len,new_tokens", [(1, 5), (3, 20), (8, 6), (12, 7)])
def test_cached_greedy_generation_equals_recomputation(use_sdpa, prompt_len, new_tokens):
    """Including past the context length (8): there the cache must be rebuilt, not just grown."""
    model = set_sdpa(tiny_cached_model(), use_sdpa)
    reference_model = set_sdpa(tiny_model(), use_sdpa)  # chapter 3's class, no cache
    prompt = torch.randint(0, TINY["vocab_size"], (2, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    cached = generate(model, prompt, new_tokens, TINY["context_length"])  # the cache is the default
    uncached = generate(model, prompt, new_tokens, TINY["context_length"], use_cache=False)
    reference = generate_text_simple(reference_model, prompt, new_tokens, TINY["context_length"])
    assert cached.shape == (2, prompt_len + new_tokens)
    assert torch.equal(uncached, reference)
    assert torch.equal(cached, reference)


def test_cached_generation_with_a_shorter_context_size_and_sampling():
    model = tiny_cached_model(seed=7)
    prompt = torch.tensor([[5, 9, 2]])
    reference = generate_text_simple(tiny_model(seed=7), prompt, 10, context_size=5)
    assert torch.equal(generate(model, prompt, 10, context_size=5), reference)
    torch.manual_seed(3)
    sampled = generate(model, prompt, 10, 5, temperature=1.5, top_k=10)
    torch.manual_seed(3)
    assert torch.equal(generate(model, prompt, 10, 5, temperature=1.5, top_k=10, use_cache=False), sampled)


def test_a_grown_cache_gives_the_logits_of_the_full_forward_pass():
    model = tiny_cached_model()
    idx = torch.randint(0, TINY["vocab_size"], (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = tiny_model()(idx)  # chapter 3's model on the whole sequence
        cache = [KVCache() for _ in model.trf_blocks]
        pieces = [model(idx[:, :3], kv_cache=cache), model(idx[:, 3:4], kv_cache=cache),
                  model(idx[:, 4:], kv_cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    assert cache[0].num_tokens == 7
    assert cache[1].keys.shape == (3, TINY["n_heads"], 7, TINY["emb_dim"] // TINY["n_heads"])


def test_the_cache_only_computes_the_new_tokens():
    """With a cache, each step after the first feeds the model one token, not the whole context."""
    model = tiny_cached_model()
    lengths = []
    model.tok_emb.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    generate(model, torch.tensor([[1, 2, 3]]), 4, TINY["context_length"])
    assert lengths == [3, 1, 1, 1]
    lengths.clear()
    generate(model, torch.tensor([[1, 2, 3]]), 4, TINY["context_length"], use_cache=False)
    assert lengths == [3, 4, 5, 6]


def test_generate_runs_a_model_without_a_cache_uncached():
    """Chapter 3's GPTModel takes no cache: 4b's generate() runs chapter 4's loop for it, and
    KVCachedModel refuses it with what to do."""
    model = tiny_model()
    lengths = []
    model.tok_emb.register_forward_hook(lambda module, args, out: lengths.append(args[0].shape[1]))
    out = generate(model, torch.tensor([[1, 2, 3]]), 3, TINY["context_length"])
    assert lengths == [3, 4, 5]
    assert torch.equal(out, generate_text_simple(model, torch.tensor([[1, 2, 3]]), 3, TINY["context_length"]))
    with pytest.raises(TypeError, match="GPTModelWithCache"):
        KVCachedModel(model)


def test_the_cached_model_has_chapter_3s_parameters_and_initialisation():
    torch.manual_seed(5)
    plain = GPTModel(TINY)
    torch.manual_seed(5)
    cached = GPTModelWithCache(TINY)
    assert list(plain.state_dict()) == list(cached.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), cached.state_dict().values()))


def test_cache_errors_are_clear():
    model = tiny_cached_model()
    with pytest.raises(ValueError, match="one per block"):
        model(torch.tensor([[1, 2]]), kv_cache=[KVCache()])
    cache = [KVCache() for _ in model.trf_blocks]
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="3 tokens after 6 cached ones .* context_length=8"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)


# --- the fast training path -------------------------------------------------------------------

def test_fast_training_path_gives_the_explicit_losses():
    """Fused attention, LayerNorm, GELU and AdamW against the explicit formulas and the
    for-loop AdamW, from the same weights on the same batches: the same losses (within 1e-5)."""
    cfg = {**TINY, "drop_rate": 0.0, "qkv_bias": False}
    fast = GPTModel(cfg)
    torch.manual_seed(0)
    for p in fast.parameters():  # random LayerNorm scales and shifts too
        nn.init.normal_(p, 0.0, 0.3)
    reference = explicit_model(GPTModel(cfg))
    reference.load_state_dict(fast.state_dict())
    fast_opt = make_adamw(fast.parameters(), lr=1e-3, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.1, foreach=False)
    assert fast_opt.defaults["fused"] and not ref_opt.defaults["fused"]
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randint(0, cfg["vocab_size"], (3, cfg["context_length"]), generator=g)
        y = torch.randint(0, cfg["vocab_size"], (3, cfg["context_length"]), generator=g)
        losses = []
        for model, opt in ((fast, fast_opt), (reference, ref_opt)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-5, losses
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_both_attention_paths_train_with_dropout(use_sdpa):
    """In training mode both paths drop attention weights: outputs vary, gradients flow."""
    mha = MultiHeadAttention(8, 8, 6, dropout=0.5, num_heads=2, use_sdpa=use_sdpa).train()
    x = torch.randn(2, 6, 8)
    torch.manual_seed(0)
    first = mha(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, mha(x))
    first.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())


@pytest.mark.parametrize("shape", [(2, 5, 16), (1, 3, 768)])
def test_fused_layernorm_and_gelu_equal_their_formulas(shape):
    torch.manual_seed(0)
    x = 4 * torch.randn(shape) - 1
    ln = LayerNorm(shape[-1])
    with torch.no_grad():
        ln.scale.normal_()
        ln.shift.normal_()
    formula = LayerNormFormula(shape[-1])
    formula.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), formula(x), atol=2e-5, rtol=0)
    torch.testing.assert_close(GELU()(x), GELUFormula()(x), atol=2e-6, rtol=0)


# --- fused AdamW --------------------------------------------------------------------------------

def test_make_adamw_fuses_where_supported():
    opt = make_adamw(nn.Linear(3, 2).parameters(), lr=0.01, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True  # CPU: since torch 2.4
    assert opt.defaults["lr"] == 0.01 and opt.defaults["weight_decay"] == 0.1


def test_make_adamw_falls_back_on_a_device_without_the_fused_kernel():
    with torch.device("meta"):
        layer = nn.Linear(3, 2)
    opt = make_adamw(layer.parameters(), lr=0.01)
    assert isinstance(opt, torch.optim.AdamW) and not opt.defaults["fused"]


def test_make_adamw_falls_back_on_a_pytorch_without_fused(monkeypatch):
    real = torch.optim.AdamW

    def old_adamw(params, fused=None, **kwargs):
        if fused is not None:
            raise TypeError("__init__() got an unexpected keyword argument 'fused'")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", old_adamw)
    layer = nn.Linear(3, 2)
    opt = make_adamw(layer.parameters(), lr=0.01)
    assert isinstance(opt, real) and not opt.defaults["fused"]
    assert len(opt.param_groups[0]["params"]) == 2  # the parameters survived the first attempt


def test_make_adamw_still_reports_a_bad_argument():
    with pytest.raises(ValueError, match="learning rate"):
        make_adamw(nn.Linear(3, 2).parameters(), lr=-1.0)


# --- weight tying ---------------------------------------------------------------------------------

def test_weight_tying_is_off_by_default_and_shares_one_matrix_when_on():
    with torch.device("meta"):
        untied = GPTModel(GPT_124M_CONFIG)
        tied = GPTModel({**GPT_124M_CONFIG, "tie_weights": True})
    assert untied.out_head.weight is not untied.tok_emb.weight
    assert tied.out_head.weight is tied.tok_emb.weight
    assert sum(p.numel() for p in untied.parameters()) == 163_009_536
    assert sum(p.numel() for p in tied.parameters()) == 124_412_160
    with pytest.raises(ValueError, match="tie_weights"):
        GPTModel({**TINY, "tie_weights": "yes"})


def test_a_tied_model_holds_gpt2_weights_like_transformers():
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(vocab_size=TINY["vocab_size"], n_positions=TINY["context_length"],
                                        n_embd=TINY["emb_dim"], n_head=TINY["n_heads"], n_layer=TINY["n_layers"])
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    ours = load_gpt2_params(GPTModel({**TINY, "tie_weights": True}), hf.state_dict()).eval()
    assert ours.out_head.weight is ours.tok_emb.weight
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)


# --- the benchmark command ------------------------------------------------------------------------

@pytest.mark.slow
def test_benchmark_quick_mode_runs():
    """--bf16 on: the bfloat16 rows on every CPU (emulated where it has no native bfloat16)."""
    result = subprocess.run([sys.executable, str(ROOT / "training" / "benchmark.py"), "--quick", "--bf16", "on"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for expected in ("GFLOP/s", "MFU", "time / SDPA", "KV cache speed-up", "identical tokens: True",
                     "all three give the same output: True", "native bfloat16 on cpu:", "bfloat16 matmul",
                     "| fast path, bf16", "x the float32 tokens/s", "within 0.05:",  # the value: test_mixed_precision.py
                     "with KV cache, bf16", "cached = recomputed in bf16: True"):
        assert expected in out, (expected, out)
