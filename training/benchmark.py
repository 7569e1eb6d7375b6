"""Speed of the course's GPT, measured side by side: python training/benchmark.py [--quick]

Prints, each measured in interleaved rounds in this one process (so that a busy moment slows
every variant alike) as median and min-max over the rounds:

1. the machine's large-matmul FLOP/s (n x n @ n x n, in float32 and in bfloat16), the yardsticks
   for what follows, and whether this CPU has native bfloat16 (chapter 4b's has_native_bf16);
2. training tokens/s of one full step (forward, loss, backward, AdamW) for the 124M config
   (batch 2 x 256 tokens, dropout 0.1) and the course's small config, and the fraction of the
   matmul FLOP/s of the step's dtype that its model FLOPs reach ("MFU"); the course's fast path
   (fused attention, LayerNorm, GELU and AdamW) next to the explicit formulas of the chapters and
   next to the fast path in mixed precision (chapter 4b's MixedPrecisionModel: bfloat16 matrix
   products under torch.autocast), with the bfloat16 / float32 ratio and the losses of both after
   the same steps on the same batch, from the same initial weights, with the same dropout masks;
3. the attention variants of chapter 2 (loop of heads, explicit masked softmax, fused
   scaled_dot_product_attention) as time ratios to the fused one;
4. greedy generation tokens/s of 200 new tokens on the 124M model, with and without the KV cache,
   in float32 and under bfloat16 autocast.

Model FLOPs per training step = 6 * N * tokens + 12 * n_layers * emb_dim * T * tokens, where N is
the number of weights in the matrices the tokens are multiplied by (every nn.Linear, including
the output head; the embedding lookups are not matmuls) and T the sequence length: the usual
convention (Kaplan et al. 2020, PaLM's MFU); the attention term counts the full T x T score matrix
although the causal mask makes half of it unnecessary. LayerNorm, GELU, softmax, dropout and the
optimizer are not counted: they are overhead.

Not part of pytest. The float32 rows compute the same maths; the bfloat16 rows round the matrix
products' inputs (chapter 4b, section 4) and are measured where the CPU has native bfloat16, or
with --bf16 on (emulated bfloat16 is slower than float32: chapter 4b's switch stays off there).
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

from helpers import (GPT_124M_CONFIG, GPT_SMALL_CONFIG, GELU, GPTModel, GPTModelWithCache, LayerNorm,  # noqa: E402
                     MixedPrecisionModel, MultiHeadAttention, generate, has_native_bf16, make_adamw)

LOSS_TOLERANCE = 0.05  # nats: bfloat16's loss after the same steps as float32's, at most this far off
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


def matmul_probe(n, device, dtype=torch.float32):
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return lambda: a @ b


def model_flops_per_token(model, cfg, seq_len):
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return n_matmul, 6 * n_matmul + 12 * cfg["n_layers"] * cfg["emb_dim"] * seq_len


def training_step(model, optimizer, x, y, losses):
    """One step on the batch (x, y); its loss (before the update) is appended to losses. The
    random generator is seeded by the step's number, so that step k of every variant draws the
    same dropout masks and their losses differ only by their arithmetic."""
    def step():
        torch.manual_seed(len(losses))
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return step


# --- the sections ------------------------------------------------------------------------------

def bench_training(configs, batch_size, rounds, n_matmul, device, bf16):
    """configs: label -> (config, sequence length T). Each variant trains its own copy of the
    same initial weights on the same batch, so that the losses of two variants can be compared."""
    print(f"\n== Training: one full step (forward, loss, backward, AdamW), dropout 0.1")
    print(f"   batch {batch_size} x T tokens per step; model FLOPs per token = 6 N + 12 L d T "
          f"(see the top of this file)")
    dtypes = {"float32": torch.float32, **({"bfloat16": torch.bfloat16} if bf16 else {})}
    fns = {f"matmul {name}": matmul_probe(n_matmul, device, dtype) for name, dtype in dtypes.items()}
    info, losses, dtype_of = {}, {}, {}
    variants = {"fast path": (False, False), "explicit formulas": (True, False)}
    if bf16:
        variants["fast path, bf16"] = (False, True)
    for label, (cfg, seq_len) in configs.items():
        torch.manual_seed(123)
        initial = GPTModel(cfg).state_dict()
        x = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)
        y = torch.randint(0, cfg["vocab_size"], (batch_size, seq_len), device=device)
        for variant, (explicit, mixed) in variants.items():
            model = GPTModel(cfg)
            model.load_state_dict(initial)
            model.to(device).train()
            set_explicit(model, explicit)
            if explicit:
                optimizer = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)  # not fused
            else:
                optimizer = make_adamw(model.parameters(), lr=4e-4, weight_decay=0.1)
                fast_path_fused = bool(optimizer.defaults.get("fused"))  # what the fast path's row used
            if mixed:
                model = MixedPrecisionModel(model, device.type)
            name = f"{label} | {variant}"
            losses[name] = []
            fns[name] = training_step(model, optimizer, x, y, losses[name])
            dtype_of[name] = "bfloat16" if mixed else "float32"
        n, flops = model_flops_per_token(model, cfg, seq_len)
        info[label] = (n, flops, fast_path_fused, batch_size * seq_len)
        del initial, model, optimizer
    times = interleaved(fns, rounds, device)
    matmul_flops = {name: [2 * n_matmul**3 / t for t in times.pop(f"matmul {name}")] for name in dtypes}
    for name, flops in matmul_flops.items():
        print(f"   machine: {n_matmul}x{n_matmul} {name:<8} matmul: {spread([f / 1e9 for f in flops], '{:,.1f}')} GFLOP/s")
    print(f"   {'config | variant':<44} {'tokens/s median (min-max)':>28} {'step s':>7} {'MFU median (min-max)':>24}")
    results = {}
    for name, ts in times.items():
        label = name.split(" | ")[0]
        n, flops, _, tokens = info[label]
        tok_s = [tokens / t for t in ts]
        yardstick = matmul_flops[dtype_of[name]]  # the matmul FLOP/s of the step's dtype, same round
        mfu = [tokens * flops / t / m for t, m in zip(ts, yardstick)]
        results[name] = statistics.median(tok_s)
        print(f"   {name:<44} {spread(tok_s, '{:,.0f}'):>28} {statistics.median(ts):7.2f} "
              f"{spread([100 * v for v in mfu], '{:.0f}%'):>24}")
    for label, (n, flops, fused, tokens) in info.items():
        ratio = results[f"{label} | fast path"] / results[f"{label} | explicit formulas"]
        print(f"   {label}: {batch_size} x {tokens // batch_size} tokens, N = {n:,} matmul weights, "
              f"{flops / 1e6:,.1f} MFLOP per token; "
              f"fast path {ratio:.2f}x the explicit formulas (AdamW fused: {fused})")
        if bf16:
            fp32, bf = losses[f"{label} | fast path"], losses[f"{label} | fast path, bf16"]
            steps = min(len(fp32), len(bf))
            gap = abs(bf[steps - 1].item() - fp32[steps - 1].item())
            print(f"   {label}: bf16 {results[f'{label} | fast path, bf16'] / results[f'{label} | fast path']:.2f}x "
                  f"the float32 tokens/s; loss at step {steps}: float32 {fp32[steps - 1].item():.4f}, "
                  f"bf16 {bf[steps - 1].item():.4f} (first step {fp32[0].item():.4f}); "
                  f"within {LOSS_TOLERANCE}: {gap < LOSS_TOLERANCE}")
    print("   fast path: scaled_dot_product_attention, F.layer_norm, F.gelu, fused AdamW (helpers.py);")
    print("   explicit:  chapters 2-3's masked softmax, LayerNorm and GELU formulas, default AdamW;")
    print("   bf16:      the fast path under torch.autocast(bfloat16), chapter 4b's MixedPrecisionModel.")


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


def bench_generation(cfg, label, prompt_len, new_tokens, rounds, device, bf16):
    print(f"\n== Greedy generation: {label}, prompt of {prompt_len} tokens, {new_tokens} new tokens")
    torch.manual_seed(123)
    model = GPTModelWithCache(cfg).to(device).eval()  # chapter 4b: the model that takes a KV cache
    prompt = torch.randint(0, cfg["vocab_size"], (1, prompt_len), device=device)
    outputs = {}

    def run(use_cache, mixed):
        def fn():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                outputs[use_cache, mixed] = generate(model, prompt, new_tokens, cfg["context_length"],
                                                     use_cache=use_cache)
        return fn

    variants = {"with KV cache": run(True, False), "recomputing the context": run(False, False)}
    if bf16:
        variants.update({"with KV cache, bf16": run(True, True), "recomputing the context, bf16": run(False, True)})
    times = interleaved(variants, rounds, device, warmup=0)
    print(f"   {'variant':<30} {'tokens/s median (min-max)':>28}")
    speed = {}
    for name, ts in times.items():
        tok_s = [new_tokens / t for t in ts]
        speed[name] = statistics.median(tok_s)
        print(f"   {name:<30} {spread(tok_s, '{:,.1f}'):>28}")
    print(f"   KV cache speed-up: {speed['with KV cache'] / speed['recomputing the context']:.1f}x; "
          f"identical tokens: {torch.equal(outputs[True, False], outputs[False, False])}")
    if bf16:
        same = (outputs[True, True][0] == outputs[True, False][0]).float().mean().item()
        print(f"   bf16: {speed['with KV cache, bf16'] / speed['with KV cache']:.2f}x float32 with the cache, "
              f"{speed['recomputing the context, bf16'] / speed['recomputing the context']:.2f}x without; "
              f"cached = recomputed in bf16: {torch.equal(outputs[True, True], outputs[False, True])}; "
              f"{100 * same:.0f}% of its tokens equal float32's (greedy, untrained model: rounding can flip a near-tie)")


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
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="bfloat16 rows: auto (default) where the device has native bfloat16, "
                             "on (also emulated), off")
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
    native = has_native_bf16(device)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native)
    capability = f", CPU kernels {torch.backends.cpu.get_cpu_capability()}" if device.type == "cpu" else ""
    print(f"native bfloat16 on {device.type}: {native}{capability}")
    if not bf16:
        print("   no bfloat16 rows: " + ("--bf16 off" if args.bf16 == "off" else
              "without native bfloat16 it is emulated and slower than float32, so chapter 4b's "
              "bf16=\"auto\" trains in float32 here (no slowdown); --bf16 on measures it anyway"))
    if "train" in sections:
        configs = ({big_label: (big, 32)} if args.quick else
                   {big_label: (big, 256), "small config": (GPT_SMALL_CONFIG, GPT_SMALL_CONFIG["context_length"])})
        bench_training(configs, batch_size=2, rounds=rounds, n_matmul=256 if args.quick else 2048,
                       device=device, bf16=bf16)
    if "attention" in sections:
        bench_attention(*((64, 4, 32) if args.quick else (768, 12, 256)), rounds=rounds, device=device)
    if "generate" in sections:
        bench_generation(big, big_label, prompt_len=4, new_tokens=10 if args.quick else 200,
                         rounds=min(rounds, 3), device=device, bf16=bf16)


if __name__ == "__main__":
    main()
