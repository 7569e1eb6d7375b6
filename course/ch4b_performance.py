# Generated from training/LLM-performance.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% training/LLM-performance.ipynb, cell 4
import torch
import torch.nn as nn
import torch.nn.functional as F

import inspect

from course.ch2_attention import MultiHeadAttention  # chapter 2
from course.ch3_architecture import GPTModel, TransformerBlock  # chapter 3
from course.ch4_training import generate as generate_uncached  # chapter 4's generate()
from course.ch4_training import calc_loss_batch, train_model_simple as train_model_fp32  # chapter 4's loss and loop
from course.ch4_training import weight_decay_groups  # chapter 4: decay on matrices only


# %% training/LLM-performance.ipynb, cell 10
def make_adamw(params, **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW with fused=True (one pass over each parameter tensor instead of a dozen
    element-wise operations) where the parameters' device has the fused kernel, plain AdamW
    otherwise: the same update. params: parameters or parameter groups, as for AdamW; or a model,
    whose weight decay then goes to its matrices only (chapter 4's weight_decay_groups)."""
    if isinstance(params, nn.Module):
        params = weight_decay_groups(params, kwargs.pop("weight_decay", 0.01))  # AdamW's default decay
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = all(p.device.type in ("cpu", "cuda", "mps") and p.is_floating_point() for p in tensors)
    try:
        return torch.optim.AdamW(params, fused=fused, **kwargs)
    except (RuntimeError, TypeError):  # an older PyTorch without this fused kernel
        return torch.optim.AdamW(params, **kwargs)


# %% training/LLM-performance.ipynb, cell 24
class KVCache:
    """The keys and values one attention layer has computed for the tokens seen so far."""

    def __init__(self) -> None:
        self.keys = None  # (batch, num_heads, num_tokens, head_dim)
        self.values = None

    @property
    def num_tokens(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' keys and values; return those of all tokens so far."""
        if self.keys is not None:
            keys = torch.cat((self.keys, keys), dim=2)
            values = torch.cat((self.values, values), dim=2)
        self.keys, self.values = keys, values
        return keys, values


# %% training/LLM-performance.ipynb, cell 27
def check_fits(num_tokens: int, past: int, context_length: int, what: str) -> None:
    """Refuse num_tokens new tokens after past cached ones that would not fit the context."""
    if past + num_tokens > context_length:
        raise ValueError(
            f"The input has {num_tokens} tokens" + (f" after {past} cached ones" if past else "")
            + f" but {what} supports at most context_length={context_length}; crop it to its last "
            f"{context_length} tokens, or start a new cache from them."
        )


def cached_attention(att: MultiHeadAttention, x: torch.Tensor, kv_cache: "KVCache") -> torch.Tensor:
    """Chapter 2's attention for the tokens x that follow the cached ones: they attend to the
    cached keys and values as well as to their own, which join the cache."""
    b, num_tokens, _ = x.shape
    past = kv_cache.num_tokens  # tokens already in the cache
    check_fits(num_tokens, past, att.context_length, "this attention")
    queries = att.split_heads(att.W_query(x))
    keys, values = att.split_heads(att.W_key(x)), att.split_heads(att.W_value(x))
    keys, values = kv_cache.update(keys, values)  # now those of all past + num_tokens tokens
    if past == 0:
        context = att.attend(queries, keys, values)  # chapter 2's causal attention
    else:
        context = attend_after_cache(att, queries, keys, values, past)
    return att.out_proj(context.transpose(1, 2).reshape(b, num_tokens, att.d_out))


def attend_after_cache(att: MultiHeadAttention, queries: torch.Tensor, keys: torch.Tensor,
                       values: torch.Tensor, past: int) -> torch.Tensor:
    """att.attend() for queries at positions past, past + 1, ...: query i sees keys 0 ... past + i."""
    future = att.mask[past:past + queries.shape[2], :keys.shape[2]]  # True: the key comes later
    if att.use_sdpa:
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=~future, dropout_p=att.dropout.p if att.training else 0.0
        )
    attn_scores = (queries @ keys.transpose(2, 3)).masked_fill(future, -torch.inf)
    return att.dropout(torch.softmax(attn_scores / att.head_dim**0.5, dim=-1)) @ values


# %% training/LLM-performance.ipynb, cell 29
def cached_block(block: TransformerBlock, x: torch.Tensor, kv_cache: "KVCache") -> torch.Tensor:
    """Chapter 3's block, its attention through the layer's cache."""
    x = x + block.drop_shortcut(cached_attention(block.att, block.norm1(x), kv_cache))
    return x + block.drop_shortcut(block.ff(block.norm2(x)))


class GPTModelWithCache(GPTModel):
    """Chapter 3's GPTModel (same constructor, parameters and state_dict) whose forward also takes
    a KV cache: a list of one KVCache per block. Then in_idx holds only the tokens that follow
    the cached ones, at positions past, past + 1, ... Without a cache it is chapter 3's forward."""

    def forward(self, in_idx: torch.Tensor, kv_cache: list["KVCache"] | None = None) -> torch.Tensor:
        if kv_cache is None:
            return super().forward(in_idx)
        self.check_token_ids(in_idx)
        if len(kv_cache) != len(self.trf_blocks):
            raise ValueError(
                f"kv_cache has {len(kv_cache)} entries but the model has {len(self.trf_blocks)} "
                f"blocks; make one per block: [KVCache() for _ in model.trf_blocks]."
            )
        seq_len, past = in_idx.shape[1], kv_cache[0].num_tokens  # past: tokens already cached
        check_fits(seq_len, past, self.context_length, "the model")
        x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb.weight[past:past + seq_len])
        for block, cache in zip(self.trf_blocks, kv_cache):
            x = cached_block(block, x, cache)
        return self.out_head(self.final_norm(x))  # (batch_size, seq_len, vocab_size)


# %% training/LLM-performance.ipynb, cell 34
def takes_kv_cache(model) -> bool:
    """Whether model's forward takes a kv_cache (one KVCache per block of model.trf_blocks)."""
    return hasattr(model, "trf_blocks") and "kv_cache" in inspect.signature(model.forward).parameters


class KVCachedModel:
    """A model that takes a KV cache, for generate(): called with the (cropped) context window
    at each step, it feeds the model only the token that is new since the last call, and
    rebuilds the cache from the whole window on the first call and once the window slides."""

    def __init__(self, model: nn.Module):
        if not takes_kv_cache(model):
            raise TypeError(
                f"{type(model).__name__}.forward takes no kv_cache; build the model as "
                f"GPTModelWithCache(cfg) (chapter 3's weights load into it with load_state_dict)."
            )
        self.model = model
        self.kv_cache = None

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        cached = 0 if self.kv_cache is None else self.kv_cache[0].num_tokens
        if cached and idx.shape[1] == cached + 1:  # the last window plus one new token
            return self.model(idx[:, -1:], kv_cache=self.kv_cache)
        self.kv_cache = [KVCache() for _ in self.model.trf_blocks]  # first call, or the window slid
        return self.model(idx, kv_cache=self.kv_cache)


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float = 0.0, top_k: int | None = None, eos_id: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Chapter 4's generate(); with use_cache=True (the default) a model that takes a KV cache
    runs behind one: the same tokens, faster."""
    if use_cache and takes_kv_cache(model):
        model = KVCachedModel(model)
    return generate_uncached(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id)


# %% training/LLM-performance.ipynb, cell 57
def has_native_bf16(device: str | torch.device) -> bool:
    """Whether device multiplies bfloat16 matrices in hardware (else bfloat16 is emulated, slower
    than float32): CUDA since Ampere; x86 CPUs with AVX-512 BF16 or AMX; nothing else."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: may be absent
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def use_bf16(bf16: bool | str, device: str | torch.device) -> bool:
    """The mixed-precision switch: False (float32), True (bfloat16, even where emulated) or
    "auto" (bfloat16 only where device has it natively)."""
    if bf16 == "auto":
        return has_native_bf16(device)
    if isinstance(bf16, bool):
        return bf16
    raise ValueError(f'bf16 must be False, True or "auto" (got {bf16!r}).')


# %% training/LLM-performance.ipynb, cell 62
class MixedPrecisionModel(nn.Module):
    """model with its forward pass under torch.autocast in bfloat16: matrix products in bfloat16,
    the weights (and so their gradients and the optimizer's state) in float32, the logits
    returned in float32 so that the loss is float32."""

    def __init__(self, model: nn.Module, device_type: str):
        super().__init__()
        self.model, self.device_type = model, device_type
        self.context_length = model.context_length  # what chapter 4's sampling reads

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            logits = self.model(in_idx)
        return logits.float()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context=None, tokenizer=None, bf16=False,
                       calc_loss=calc_loss_batch, **schedule):
    """Chapter 4's loop; with bf16 on (True, or "auto" where the device has native bfloat16)
    every forward pass runs in mixed precision, through MixedPrecisionModel. schedule: chapter 4's
    warmup_steps, min_lr, max_grad_norm and history, passed on as they are."""
    if use_bf16(bf16, device):
        model = MixedPrecisionModel(model, torch.device(device).type)
    return train_model_fp32(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter, start_context, tokenizer, calc_loss, **schedule)
