# Generated from attention/LLM_attention.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% attention/LLM_attention.ipynb, cell 4
import torch
import torch.nn as nn
import torch.nn.functional as F


# %% attention/LLM_attention.ipynb, cell 78
def head_attention_weights(mha: "MultiHeadAttention", x: torch.Tensor) -> torch.Tensor:
    # The causal attention weights of every head: (b, num_heads, num_tokens, num_tokens).
    b, num_tokens, _ = x.shape
    queries = mha.W_query(x).view(b, num_tokens, mha.num_heads, mha.head_dim).transpose(1, 2)
    keys = mha.W_key(x).view(b, num_tokens, mha.num_heads, mha.head_dim).transpose(1, 2)
    scores = (queries @ keys.transpose(2, 3)).masked_fill(mha.mask[:num_tokens, :num_tokens], -torch.inf)
    return torch.softmax(scores / mha.head_dim**0.5, dim=-1)


# %% attention/LLM_attention.ipynb, cell 97
class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: one matmul each for Q, K and V, split into heads.

    use_sdpa=True (the default) computes the attention with PyTorch's fused
    scaled_dot_product_attention, use_sdpa=False with the explicit masked softmax: the same
    function, at different speeds."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, use_sdpa: bool = True):
        super().__init__()
        if d_out % num_heads != 0:
            raise ValueError(
                f"d_out ({d_out}) must be divisible by num_heads ({num_heads}): each head gets "
                f"d_out / num_heads dimensions."
            )
        self.d_out = d_out
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.context_length = context_length
        self.use_sdpa = use_sdpa
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1).bool(),
            persistent=False,
        )

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)"""
        b, num_tokens, _ = x.shape
        return x.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Causal attention within one sequence: every token's weighted sum of the values of
        itself and the tokens before it, (b, num_heads, num_tokens, head_dim)."""
        if self.use_sdpa:
            return F.scaled_dot_product_attention(
                queries, keys, values, is_causal=True, dropout_p=self.dropout.p if self.training else 0.0
            )
        num_tokens = queries.shape[2]
        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens)
        attn_scores = attn_scores.masked_fill(self.mask[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        return self.dropout(attn_weights) @ values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, _ = x.shape
        if num_tokens > self.context_length:
            raise ValueError(
                f"The input has {num_tokens} tokens but this attention supports at most "
                f"context_length={self.context_length}; crop the input to its last "
                f"{self.context_length} tokens."
            )
        queries = self.split_heads(self.W_query(x))
        keys = self.split_heads(self.W_key(x))
        values = self.split_heads(self.W_value(x))
        context = self.attend(queries, keys, values)  # (b, num_heads, num_tokens, head_dim)
        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)  # heads side by side
        return self.out_proj(context)
