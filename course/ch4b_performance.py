# Generated from training/LLM-performance.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% training/LLM-performance.ipynb, cell 4
import torch
import torch.nn as nn
import torch.nn.functional as F

from course.ch2_attention import MultiHeadAttention  # chapter 2
from course.ch3_architecture import GPTModel, TransformerBlock  # chapter 3
from course.ch4_training import generate as generate_uncached  # chapter 4's generate()
from course.ch4_training import calc_loss_batch, train_model_simple as train_model_fp32  # chapter 4's loss and loop


# %% training/LLM-performance.ipynb, cell 10
def make_adamw(params, **kwargs):
    """torch.optim.AdamW with fused=True (one pass over each parameter tensor instead of a dozen
    element-wise operations) where the parameters' device has the fused kernel, plain AdamW
    otherwise: the same update."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda", "mps") and p.is_floating_point() for p in params)
    try:
        return torch.optim.AdamW(params, fused=fused, **kwargs)
    except (RuntimeError, TypeError):  # an older PyTorch without this fused kernel
        return torch.optim.AdamW(params, **kwargs)


# %% training/LLM-performance.ipynb, cell 24
class KVCache:
    """The keys and values one attention layer has computed for the tokens seen so far."""

    def __init__(self):
        self.keys = None  # (batch, num_heads, num_tokens, head_dim)
        self.values = None

    @property
    def num_tokens(self):
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, keys, values):
        """Append the new tokens' keys and values; return those of all tokens so far."""
        if self.keys is not None:
            keys = torch.cat((self.keys, keys), dim=2)
            values = torch.cat((self.values, values), dim=2)
        self.keys, self.values = keys, values
        return keys, values


# %% training/LLM-performance.ipynb, cell 26
def add_to_class(cls):
    """Decorator: make the function below a method of cls (replacing one of the same name)."""
    def register(method):
        setattr(cls, method.__name__, method)
        return method
    return register


# %% training/LLM-performance.ipynb, cell 28
def check_fits(num_tokens, past, context_length, what):
    """Refuse num_tokens new tokens after past cached ones that would not fit the context."""
    if past + num_tokens > context_length:
        raise ValueError(
            f"The input has {num_tokens} tokens" + (f" after {past} cached ones" if past else "")
            + f" but {what} supports at most context_length={context_length}; crop it to its last "
            f"{context_length} tokens, or start a new cache from them."
        )


@add_to_class(MultiHeadAttention)
def forward(self, x, kv_cache=None):
    """Chapter 2's forward; with a KVCache, x holds only the tokens that follow the cached ones,
    and they attend to the cached keys and values as well as to their own."""
    b, num_tokens, _ = x.shape
    past = 0 if kv_cache is None else kv_cache.num_tokens  # tokens already in the cache
    check_fits(num_tokens, past, self.context_length, "this attention")
    queries = self.split_heads(self.W_query(x))
    keys, values = self.split_heads(self.W_key(x)), self.split_heads(self.W_value(x))
    if kv_cache is not None:
        keys, values = kv_cache.update(keys, values)  # now those of all past + num_tokens tokens
    if past == 0:
        context = self.attend(queries, keys, values)  # chapter 2's causal attention
    else:
        context = self.attend_after_cache(queries, keys, values, past)
    return self.out_proj(context.transpose(1, 2).reshape(b, num_tokens, self.d_out))


@add_to_class(MultiHeadAttention)
def attend_after_cache(self, queries, keys, values, past):
    """attend() for queries at positions past, past + 1, ...: query i sees keys 0 ... past + i."""
    future = self.mask[past:past + queries.shape[2], :keys.shape[2]]  # True: the key comes later
    if self.use_sdpa:
        return F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=~future, dropout_p=self.dropout.p if self.training else 0.0
        )
    attn_scores = (queries @ keys.transpose(2, 3)).masked_fill(future, -torch.inf)
    return self.dropout(torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)) @ values


# %% training/LLM-performance.ipynb, cell 30
@add_to_class(TransformerBlock)
def forward(self, x, kv_cache=None):
    """Chapter 3's block; kv_cache, one layer's KVCache, goes to the attention."""
    x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache))
    return x + self.drop_shortcut(self.ff(self.norm2(x)))


@add_to_class(GPTModel)
def forward(self, in_idx, kv_cache=None):
    """Chapter 3's forward; kv_cache, a list of one KVCache per block, makes in_idx the tokens
    that follow the cached ones, at positions past, past + 1, ..."""
    self.check_token_ids(in_idx)
    caches = [None] * len(self.trf_blocks) if kv_cache is None else kv_cache
    if len(caches) != len(self.trf_blocks):
        raise ValueError(
            f"kv_cache has {len(caches)} entries but the model has {len(self.trf_blocks)} "
            f"blocks; make one per block: [KVCache() for _ in model.trf_blocks]."
        )
    seq_len = in_idx.shape[1]
    past = 0 if caches[0] is None else caches[0].num_tokens  # tokens already in the cache
    check_fits(seq_len, past, self.context_length, "the model")
    x = self.drop_emb(self.tok_emb(in_idx) + self.pos_emb.weight[past:past + seq_len])
    for block, cache in zip(self.trf_blocks, caches):
        x = block(x, cache)
    return self.out_head(self.final_norm(x))  # (batch_size, seq_len, vocab_size)


# %% training/LLM-performance.ipynb, cell 35
class KVCachedModel:
    """A GPTModel behind a KV cache, for generate(): called with the (cropped) context window
    at each step, it feeds the model only the token that is new since the last call, and
    rebuilds the cache from the whole window on the first call and once the window slides."""

    def __init__(self, model):
        self.model = model
        self.kv_cache = None

    def __call__(self, idx):
        cached = 0 if self.kv_cache is None else self.kv_cache[0].num_tokens
        if cached and idx.shape[1] == cached + 1:  # the last window plus one new token
            return self.model(idx[:, -1:], kv_cache=self.kv_cache)
        self.kv_cache = [KVCache() for _ in self.model.trf_blocks]  # first call, or the window slid
        return self.model(idx, kv_cache=self.kv_cache)


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=True):
    """Chapter 4's generate(); with use_cache=True (the default) a GPTModel runs behind a KV
    cache: the same tokens, faster."""
    if use_cache and isinstance(model, GPTModel):
        model = KVCachedModel(model)
    return generate_uncached(model, idx, max_new_tokens, context_size, temperature, top_k, eos_id)


# %% training/LLM-performance.ipynb, cell 57
def has_native_bf16(device):
    """Whether device multiplies bfloat16 matrices in hardware (else bfloat16 is emulated, slower
    than float32): CUDA since Ampere; x86 CPUs with AVX-512 BF16 or AMX; nothing else."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: may be absent
        return any(getattr(torch.cpu, check, lambda: False)() for check in checks)
    return False


def use_bf16(bf16, device):
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

    def __init__(self, model, device_type):
        super().__init__()
        self.model, self.device_type = model, device_type
        self.context_length = model.context_length  # what chapter 4's sampling reads

    def forward(self, in_idx):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            logits = self.model(in_idx)
        return logits.float()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, bf16=False,
                       calc_loss=calc_loss_batch):
    """Chapter 4's loop; with bf16 on (True, or "auto" where the device has native bfloat16)
    every forward pass runs in mixed precision, through MixedPrecisionModel."""
    if use_bf16(bf16, device):
        model = MixedPrecisionModel(model, torch.device(device).type)
    return train_model_fp32(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter, start_context, tokenizer, calc_loss)
