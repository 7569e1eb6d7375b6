"""Speed of the course's GPT, measured side by side: python training/benchmark.py [--quick]

Prints, each measured in interleaved rounds in this one process (so that a busy moment slows
every variant alike) as median and min-max over the rounds:

1. the machine's large-matmul FLOP/s (float32 n x n @ n x n), the yardstick for what follows;
2. training tokens/s of one full step (forward, loss, backward, AdamW) for the 124M config
   (batch 2 x 256 tokens, dropout 0.1) and the course's small config, and the fraction of the
   matmul FLOP/s that the step's model FLOPs reach ("MFU"); the course's fast path (fused
   attention, LayerNorm, GELU and AdamW) next to the explicit formulas of the chapters;
3. the attention variants of chapter 2 (loop of heads, explicit masked softmax, fused
   scaled_dot_product_attention) as time ratios to the fused one;
4. greedy generation tokens/s of 200 new tokens on the 124M model, with and without the KV cache.

Model FLOPs per training step = 6 * N * tokens + 12 * n_layers * emb_dim * T * tokens, where N is
the number of weights in the matrices the tokens are multiplied by (every nn.Linear, including
the output head; the embedding lookups are not matmuls) and T the sequence length: the usual
convention (Kaplan et al. 2020, PaLM's MFU); the attention term counts the full T x T score matrix
although the causal mask makes half of it unnecessary. LayerNorm, GELU, softmax, dropout and the
optimizer are not counted: they are overhead.

Not part of pytest. Float32 everywhere: nothing here changes the maths.
"""
import argparse
import ast
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import (GPT_124M_CONFIG, GPT_SMALL_CONFIG, GELU, GPTModel, LayerNorm,  # noqa: E402
                     MultiHeadAttention, generate, make_adamw)

TINY_CONFIG = {  # --quick: a stand-in for the 124M model
    "vocab_size": 1000, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
    "drop_rate": 0.1, "qkv_bias": False,
}


# --- the chapters' explicit formulas, for the comparison rows --------------------------------

class LayerNormFormula(LayerNorm):
    """Chapter 3, section 2: the formula spelled out (same parameters as LayerNorm)."""

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELUFormula(GELU):
    """Chapter 3, section 3: the tanh approximation spelled out."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
        ))


def set_explicit(model, explicit):
    """Switch a GPTModel, in place, between the fast path and the chapters' explicit formulas.
    The weights stay the same objects: only the classes and the attention switch change."""
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.use_sdpa = not explicit
        elif isinstance(module, LayerNorm):
            module.__class__ = LayerNormFormula if explicit else LayerNorm
        elif isinstance(module, GELU):
            module.__class__ = GELUFormula if explicit else GELU


def notebook_classes(*names):
    """Classes as chapter 2's notebook defines them (only those definitions are run)."""
    import json
    nb = json.loads((ROOT / "attention" / "LLM_attention.ipynb").read_text(encoding="utf-8"))
    namespace = {"torch": torch, "nn": nn, "F": F}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef) and node.name in names:
                exec(compile(ast.Module(body=[node], type_ignores=[]), "LLM_attention.ipynb", "exec"), namespace)
    return [namespace[name] for name in names]


# --- measuring ---------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns, rounds, device, warmup=1, min_seconds=0.2):
    """{name: [seconds per call, one value per round]}: every round runs each fn in turn.
    A fast fn is called several times per round (calibrated on its warm-up) and averaged, so
    that a measurement is not shorter than about min_seconds."""
    repeats = {}
    for name, fn in fns.items():
        elapsed = min((timed(fn, device) for _ in range(warmup)), default=min_seconds)
        repeats[name] = max(1, min(100, round(min_seconds / max(elapsed, 1e-6))))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(lambda: [fn() for _ in range(repeats[name])], device) / repeats[name])
    return times


def spread(values, fmt="{:,.0f}"):
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}-{fmt.format(max(values))})")


def matmul_probe(n, device):
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return lambda: a @ b


def model_flops_per_token(model, cfg, seq_len):
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return n_matmul, 6 * n_matmul + 12 * cfg["n_layers"] * cfg["emb_dim"] * seq_len


def training_step(model, optimizer, x, y):
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
    return step


# --- the sections ------------------------------------------------------------------------------

def bench_training(configs, batch_size, rounds, n_matmul, device):
    """configs: label -> (config, sequence length T)."""
    print("\n== Training: one full step (forward, loss, backward, AdamW), dropout 0.1, float32")
    print(f"   batch {batch_size} x T tokens per step; model FLOPs per token = 6 N + 12 L d T "
          f"(see the top of this file)")
    fns, info = {"matmul": matmul_probe(n_matmul, device)}, {}
    for label, (cfg, seq_len) in configs.items():
        torch.manual_seed(123)
        model = GPTModel(cfg).to(device).train()
        params = list(model.parameters())
        fused_adamw = make_adamw(params, lr=4e-4, weight_decay=0.1)
        plain_adamw = torch.optim.AdamW(params, lr=4e-4, weight_decay=0.1)  # the default: not fused
        x = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)
        y = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)
        fast_step = training_step(model, fused_adamw, x, y)
        explicit_step = training_step(model, plain_adamw, x, y)

        def fast(model=model, step=fast_step):
            set_explicit(model, False)
            step()

        def explicit(model=model, step=explicit_step):
            set_explicit(model, True)
            step()

        n, flops = model_flops_per_token(model, cfg, seq_len)
        fused = bool(fused_adamw.defaults.get("fused"))
        info[label] = (n, flops, fused, batch_size * seq_len)
        fns[f"{label} | fast path"] = fast
        fns[f"{label} | explicit formulas"] = explicit
    times = interleaved(fns, rounds, device)
    matmul_flops = [2 * n_matmul**3 / t for t in times.pop("matmul")]
    print(f"   machine: {n_matmul}x{n_matmul} float32 matmul: {spread([f / 1e9 for f in matmul_flops], '{:,.1f}')} GFLOP/s")
    print(f"   {'config | variant':<44} {'tokens/s median (min-max)':>28} {'step s':>7} {'MFU median (min-max)':>24}")
    results = {}
    for name, ts in times.items():
        label = name.split(" | ")[0]
        n, flops, _, tokens = info[label]
        tok_s = [tokens / t for t in ts]
        mfu = [tokens * flops / t / m for t, m in zip(ts, matmul_flops)]  # same round's matmul
        results[name] = statistics.median(tok_s)
        print(f"   {name:<44} {spread(tok_s, '{:,.0f}'):>28} {statistics.median(ts):7.2f} "
              f"{spread([100 * v for v in mfu], '{:.0f}%'):>24}")
    for label, (n, flops, fused, tokens) in info.items():
        ratio = results[f"{label} | fast path"] / results[f"{label} | explicit formulas"]
        print(f"   {label}: {batch_size} x {tokens // batch_size} tokens, N = {n:,} matmul weights, "
              f"{flops / 1e6:,.1f} MFLOP per token; "
              f"fast path {ratio:.2f}x the explicit formulas (AdamW fused: {fused})")
    print("   fast path: scaled_dot_product_attention, F.layer_norm, F.gelu, fused AdamW (helpers.py);")
    print("   explicit:  chapters 2-3's masked softmax, LayerNorm and GELU formulas, default AdamW.")


def bench_attention(d_model, num_heads, num_tokens, rounds, device):
    print(f"\n== Attention variants of chapter 2: forward, eval mode, 1 x {num_tokens} tokens, "
          f"{d_model} dims, {num_heads} heads")
    _, Wrapper = notebook_classes("CausalAttention", "MultiHeadAttentionWrapper")
    torch.manual_seed(123)
    x = torch.randn(1, num_tokens, d_model, device=device)
    fused = MultiHeadAttention(d_model, d_model, num_tokens, 0.0, num_heads).to(device).eval()
    explicit = MultiHeadAttention(d_model, d_model, num_tokens, 0.0, num_heads, use_sdpa=False).to(device).eval()
    explicit.load_state_dict(fused.state_dict())
    wrapper = Wrapper(d_model, d_model // num_heads, num_tokens, 0.0, num_heads).to(device).eval()
    with torch.no_grad():  # the wrapper's heads get the same weights, and the same out_proj
        for name in ("W_query", "W_key", "W_value"):
            rows = getattr(fused, name).weight.split(d_model // num_heads)
            for head, w in zip(wrapper.heads, rows):
                getattr(head, name).weight.copy_(w)
    variants = {
        "wrapper (loop over heads)": lambda: fused.out_proj(wrapper(x)),
        "MultiHeadAttention, explicit": lambda: explicit(x),
        "MultiHeadAttention, SDPA": lambda: fused(x),
    }
    with torch.no_grad():
        reference = fused(x)
        agree = all(torch.allclose(fn(), reference, atol=1e-4) for fn in variants.values())
        times = interleaved(variants, rounds, device)
    sdpa = statistics.median(times["MultiHeadAttention, SDPA"])
    print(f"   {'variant':<30} {'ms median (min-max)':>24} {'time / SDPA':>12}")
    for name, ts in times.items():
        print(f"   {name:<30} {spread([1000 * t for t in ts], '{:.1f}'):>24} {statistics.median(ts) / sdpa:11.2f}x")
    print(f"   all three give the same output: {agree}")


def bench_generation(cfg, label, prompt_len, new_tokens, rounds, device):
    print(f"\n== Greedy generation: {label}, prompt of {prompt_len} tokens, {new_tokens} new tokens")
    torch.manual_seed(123)
    model = GPTModel(cfg).to(device).eval()
    prompt = torch.randint(0, cfg["vocab_size"], (1, prompt_len), device=device)
    outputs = {}

    def run(use_cache):
        def fn():
            outputs[use_cache] = generate(model, prompt, new_tokens, cfg["context_length"], use_cache=use_cache)
        return fn

    times = interleaved({"with KV cache": run(True), "recomputing the context": run(False)},
                        rounds, device, warmup=0)
    print(f"   {'variant':<26} {'tokens/s median (min-max)':>28}")
    speed = {}
    for name, ts in times.items():
        tok_s = [new_tokens / t for t in ts]
        speed[name] = statistics.median(tok_s)
        print(f"   {name:<26} {spread(tok_s, '{:,.1f}'):>28}")
    print(f"   KV cache speed-up: {speed['with KV cache'] / speed['recomputing the context']:.1f}x; "
          f"identical tokens: {torch.equal(outputs[True], outputs[False])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test in seconds: a tiny model instead of 124M, 2 rounds, fewer tokens")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per section (default 5; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--only", choices=["train", "attention", "generate"], action="append",
                        help="run only these sections (repeatable)")
    args = parser.parse_args()
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (2 if args.quick else 5)
    sections = set(args.only or ["train", "attention", "generate"])

    big, big_label = (TINY_CONFIG, "tiny config (--quick)") if args.quick else (GPT_124M_CONFIG, "124M config")
    print(f"torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads "
          f"({os.cpu_count()} logical CPUs), device {device}; {rounds} interleaved rounds")
    if "train" in sections:
        configs = ({big_label: (big, 32)} if args.quick else
                   {big_label: (big, 256), "small config": (GPT_SMALL_CONFIG, GPT_SMALL_CONFIG["context_length"])})
        bench_training(configs, batch_size=2, rounds=rounds, n_matmul=256 if args.quick else 2048, device=device)
    if "attention" in sections:
        bench_attention(*((64, 4, 32) if args.quick else (768, 12, 256)), rounds=rounds, device=device)
    if "generate" in sections:
        bench_generation(big, big_label, prompt_len=4, new_tokens=10 if args.quick else 200,
                         rounds=min(rounds, 3), device=device)


if __name__ == "__main__":
    main()
