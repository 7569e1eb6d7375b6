# Generated from architecture/LLM-GPT-arch.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% architecture/LLM-GPT-arch.ipynb, cell 4
import torch
import torch.nn as nn
import torch.nn.functional as F

from course.ch2_attention import MultiHeadAttention  # chapter 2, section 7


# %% architecture/LLM-GPT-arch.ipynb, cell 8
GPT_124M_CONFIG = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # the longest input the model supports
    "emb_dim": 768,          # embedding dimension
    "n_heads": 12,           # attention heads
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout rate
    "qkv_bias": False,       # bias in the query, key and value projections
}


# %% architecture/LLM-GPT-arch.ipynb, cell 35
class FeedForward(nn.Module):
    """Expand each token to 4x the embedding size, apply GELU, project back."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# %% architecture/LLM-GPT-arch.ipynb, cell 47
class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


# %% architecture/LLM-GPT-arch.ipynb, cell 51
def check_config(cfg: dict) -> None:
    """Fail early, naming the key, instead of with a shape error deep inside the model."""
    required = {"vocab_size": int, "context_length": int, "emb_dim": int, "n_heads": int,
                "n_layers": int, "drop_rate": float, "qkv_bias": bool}
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"The config is missing the key(s) {missing}; it needs {list(required)}.")
    for key, kind in required.items():
        value = cfg[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"cfg[{key!r}] must be a positive integer (got {value!r}).")
    drop_rate = cfg["drop_rate"]
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise ValueError(f"cfg['drop_rate'] must be a number in [0, 1) (got {drop_rate!r}).")
    if not isinstance(cfg["qkv_bias"], bool):
        raise ValueError(f"cfg['qkv_bias'] must be True or False (got {cfg['qkv_bias']!r}).")
    if not isinstance(cfg.get("tie_weights", False), bool):  # optional key, off by default
        raise ValueError(f"cfg['tie_weights'] must be True or False (got {cfg['tie_weights']!r}).")
    if cfg["emb_dim"] % cfg["n_heads"] != 0:
        raise ValueError(
            f"cfg['emb_dim'] ({cfg['emb_dim']}) must be divisible by cfg['n_heads'] "
            f"({cfg['n_heads']}): each head gets emb_dim / n_heads dimensions."
        )


# %% architecture/LLM-GPT-arch.ipynb, cell 52
class GPTModel(nn.Module):
    """Token + position embeddings -> n_layers transformer blocks -> final norm -> logits.

    cfg["tie_weights"] (optional, default False) shares one matrix between the token embedding
    and the output head, as GPT-2 does."""

    def __init__(self, cfg: dict):
        super().__init__()
        check_config(cfg)
        self.context_length = cfg["context_length"]  # the longest input, read by generation code
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_weights", False):
            self.out_head.weight = self.tok_emb.weight  # one matrix at both ends, as in GPT-2

    def check_token_ids(self, in_idx: torch.Tensor) -> None:
        """Refuse what is not a (batch_size, num_tokens) tensor of ids this vocabulary has, or has no token."""
        if not isinstance(in_idx, torch.Tensor) or in_idx.dim() != 2:
            shape = tuple(in_idx.shape) if isinstance(in_idx, torch.Tensor) else type(in_idx).__name__
            raise ValueError(
                f"in_idx must be a tensor of token ids of shape (batch_size, num_tokens), got "
                f"{shape}; for a single sequence add the batch dimension with in_idx.unsqueeze(0)."
            )
        if in_idx.is_floating_point() or in_idx.dtype == torch.bool or in_idx.is_complex():
            raise ValueError(
                f"in_idx must hold whole-number token ids (torch.long), got dtype {in_idx.dtype}; "
                f"token ids come from the tokenizer, e.g. torch.tensor(tokenizer.encode(text))."
            )
        if in_idx.shape[1] == 0:
            raise ValueError(
                f"in_idx holds no tokens (shape {tuple(in_idx.shape)}): the model predicts the next "
                f"token from at least one; start an empty prompt with a token, e.g. GPT-2's "
                f"<|endoftext|> (id 50256)."
            )
        vocab_size = self.tok_emb.num_embeddings
        if in_idx.numel() and (in_idx.min() < 0 or in_idx.max() >= vocab_size):
            raise ValueError(
                f"in_idx holds token ids from {in_idx.min().item()} to {in_idx.max().item()}, but "
                f"this model's vocabulary has ids 0 to {vocab_size - 1}: use the tokenizer the "
                f"model was built for (cfg['vocab_size'] = {vocab_size})."
            )

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        self.check_token_ids(in_idx)
        seq_len = in_idx.shape[1]
        if seq_len > self.context_length:
            raise ValueError(
                f"The input has {seq_len} tokens but the model supports at most "
                f"context_length={self.context_length}; crop it to its last {self.context_length} "
                f"tokens, e.g. in_idx[:, -model.context_length:]."
            )
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb.weight[:seq_len]  # = pos_emb(torch.arange(seq_len))
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (batch_size, seq_len, vocab_size)


# %% architecture/LLM-GPT-arch.ipynb, cell 69
GPT_FAMILY = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


# %% architecture/LLM-GPT-arch.ipynb, cell 76
def generate_text_simple(model: nn.Module, idx: torch.Tensor, max_new_tokens: int,
                         context_size: int) -> torch.Tensor:
    """Greedy decoding: append the most likely next token, max_new_tokens times."""
    if context_size < 1:
        raise ValueError(
            f"context_size must be at least 1 (got {context_size}); pass the model's "
            f"context_length, e.g. model.context_length."
        )
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # crop to the context the model supports
        with torch.no_grad():
            logits = model(idx_cond)
        next_id = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
        idx = torch.cat((idx, next_id), dim=1)
    return idx


# %% architecture/LLM-GPT-arch.ipynb, cell 90
class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift.
    The formula of the chapter, computed by PyTorch's fused layer_norm kernel."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)  # biased variance


# %% architecture/LLM-GPT-arch.ipynb, cell 91
class GELU(nn.Module):
    """GELU activation, tanh approximation (the one GPT-2 was trained with), in one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")
