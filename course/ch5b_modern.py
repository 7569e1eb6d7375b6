# Generated from post_training/LLM-modern-open-model.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% post_training/LLM-modern-open-model.ipynb, cell 5
import inspect

import regex
import torch
import torch.nn as nn
import torch.nn.functional as F

from course.ch1b_tokenizer import GPT2Tokenizer  # chapter 1b's byte-level BPE
from course.ch3_architecture import GPTModel  # chapter 3 (for its input checks)
from course.ch4b_performance import check_fits, generate  # chapter 4b: generate() with the KV cache
from course.infra import CheckpointError, get_data_file  # not taught: files and errors


# %% post_training/LLM-modern-open-model.ipynb, cell 9
SMOLLM2_135M_CONFIG = {
    "vocab_size": 49152,     # SmolLM2's BPE vocabulary (GPT-2: 50,257)
    "context_length": 8192,  # the longest input (GPT-2: 1,024)
    "emb_dim": 576,          # embedding dimension (GPT-2 small: 768)
    "n_heads": 9,            # query heads, 64 dimensions each
    "n_kv_heads": 3,         # new: key/value heads, each shared by 9 / 3 = 3 query heads
    "n_layers": 30,          # transformer blocks (GPT-2 small: 12)
    "hidden_dim": 1536,      # new: the feed-forward's inner width (GPT-2: 4 x emb_dim)
    "rope_base": 100000.0,   # new: the base of the rotary position angles
    "norm_eps": 1e-5,        # RMSNorm's epsilon
    "tie_weights": True,     # the output head is the token embedding matrix
}


# %% post_training/LLM-modern-open-model.ipynb, cell 12
class RMSNorm(nn.Module):
    """Divide each token's features by their root mean square, then scale: LayerNorm without
    the mean and without the shift."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x):
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x / rms * self.scale


# %% post_training/LLM-modern-open-model.ipynb, cell 16
class SwiGLU(nn.Module):
    """The gated feed-forward: down(silu(gate(x)) * up(x)), three matrices and no biases."""

    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.up = nn.Linear(cfg["emb_dim"], cfg["hidden_dim"], bias=False)
        self.down = nn.Linear(cfg["hidden_dim"], cfg["emb_dim"], bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


# %% post_training/LLM-modern-open-model.ipynb, cell 20
def rope_angles(head_dim, base, positions):
    """cos and sin of the angle p * theta_i for each position p and pair i: two
    (len(positions), head_dim / 2) tables, with theta_i = base ** (-2i / head_dim)."""
    theta = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * theta[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate the pairs (x[..., 2i], x[..., 2i + 1]) of every head's vector by their angles.
    x: (batch, heads, num_tokens, head_dim); cos, sin: (num_tokens, head_dim / 2)."""
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    rotated = (x_even * cos - x_odd * sin, x_even * sin + x_odd * cos)
    return torch.stack(rotated, dim=-1).flatten(-2)  # the pairs side by side again


# %% post_training/LLM-modern-open-model.ipynb, cell 25
def pairs_to_halves(weight, num_heads):
    """Reorder W_q's or W_k's rows from the pairs layout (llama.cpp, GGUF: pair i is rows 2i,
    2i + 1 of each head) to the halves layout (Hugging Face: pair i is rows i, i + head_dim / 2)."""
    out_dim, in_dim = weight.shape
    head_dim = out_dim // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


# %% post_training/LLM-modern-open-model.ipynb, cell 31
class GroupedQueryAttention(nn.Module):
    """Causal attention in which num_heads query heads share num_kv_heads key/value heads
    (query head h reads key/value head h // (num_heads / num_kv_heads)); queries and keys are
    rotated by their positions (RoPE). No biases, no dropout."""

    def __init__(self, d_in, num_heads, num_kv_heads, rope_base):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.rope_base = num_heads, num_kv_heads, rope_base
        self.head_dim = d_in // num_heads
        self.group_size = num_heads // num_kv_heads  # query heads per key/value head
        self.W_query = nn.Linear(d_in, num_heads * self.head_dim, bias=False)
        self.W_key = nn.Linear(d_in, num_kv_heads * self.head_dim, bias=False)  # smaller
        self.W_value = nn.Linear(d_in, num_kv_heads * self.head_dim, bias=False)  # smaller
        self.out_proj = nn.Linear(num_heads * self.head_dim, d_in, bias=False)

    def split_heads(self, x, heads):
        """(b, num_tokens, heads * head_dim) -> (b, heads, num_tokens, head_dim)"""
        b, num_tokens, _ = x.shape
        return x.view(b, num_tokens, heads, self.head_dim).transpose(1, 2)

    def forward(self, x, kv_cache=None, mask=None):
        """x: (b, num_tokens, d_in), the tokens after the kv_cache's (chapter 4b's KVCache, which
        stores num_kv_heads heads); mask: None for plain causal attention, else a bool
        (b, 1, num_tokens, keys) tensor, True where a query may look."""
        b, num_tokens, _ = x.shape
        past = 0 if kv_cache is None else kv_cache.num_tokens  # the new tokens' positions start here
        cos, sin = rope_angles(self.head_dim, self.rope_base, torch.arange(past, past + num_tokens, device=x.device))
        queries = apply_rope(self.split_heads(self.W_query(x), self.num_heads), cos, sin)
        keys = apply_rope(self.split_heads(self.W_key(x), self.num_kv_heads), cos, sin)
        values = self.split_heads(self.W_value(x), self.num_kv_heads)
        if kv_cache is not None:
            keys, values = kv_cache.update(keys, values)  # cached keys are already rotated
        keys = keys.repeat_interleave(self.group_size, dim=1)  # (b, num_heads, keys, head_dim)
        values = values.repeat_interleave(self.group_size, dim=1)
        context = F.scaled_dot_product_attention(
            queries, keys, values, attn_mask=mask, is_causal=mask is None and num_tokens > 1)
        return self.out_proj(context.transpose(1, 2).reshape(b, num_tokens, -1))


# %% post_training/LLM-modern-open-model.ipynb, cell 39
class LlamaBlock(nn.Module):
    """Chapter 3's pre-norm block with RMSNorm, grouped-query attention with RoPE, SwiGLU,
    and no dropout."""

    def __init__(self, cfg):
        super().__init__()
        self.att = GroupedQueryAttention(cfg["emb_dim"], cfg["n_heads"], cfg["n_kv_heads"], cfg["rope_base"])
        self.ff = SwiGLU(cfg)
        self.norm1 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"])
        self.norm2 = RMSNorm(cfg["emb_dim"], cfg["norm_eps"])

    def forward(self, x, kv_cache=None, mask=None):
        x = x + self.att(self.norm1(x), kv_cache, mask)
        return x + self.ff(self.norm2(x))


# %% post_training/LLM-modern-open-model.ipynb, cell 43
def check_llama_config(cfg):
    """Fail early, naming the key, instead of with a shape error deep inside the model."""
    missing = [key for key in SMOLLM2_135M_CONFIG if key not in cfg]
    if missing:
        raise ValueError(f"The config is missing the key(s) {missing}; it needs {list(SMOLLM2_135M_CONFIG)}.")
    for key in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_kv_heads", "n_layers", "hidden_dim"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"cfg[{key!r}] must be a positive integer (got {cfg[key]!r}).")
    if cfg["emb_dim"] % cfg["n_heads"] or (cfg["emb_dim"] // cfg["n_heads"]) % 2:
        raise ValueError(f"cfg['emb_dim'] ({cfg['emb_dim']}) must be n_heads ({cfg['n_heads']}) times an even "
                         f"head size: RoPE rotates each head's dimensions in pairs.")
    if cfg["n_heads"] % cfg["n_kv_heads"]:
        raise ValueError(f"cfg['n_heads'] ({cfg['n_heads']}) must be a multiple of cfg['n_kv_heads'] "
                         f"({cfg['n_kv_heads']}): each key/value head serves the same number of query heads.")


# %% post_training/LLM-modern-open-model.ipynb, cell 45
def attention_mask(num_tokens, past, padding_mask, device):
    """None where plain causal attention will do (no padding, and no cache or one new token);
    else a bool (batch, 1, num_tokens, past + num_tokens) mask, True where a query may look:
    at keys up to its own position that are not padding, and always at itself (so a padding
    query has one key, and its softmax never divides by zero)."""
    if padding_mask is None and (past == 0 or num_tokens == 1):
        return None
    query_pos = torch.arange(past, past + num_tokens, device=device)[:, None]
    key_pos = torch.arange(past + num_tokens, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None]  # (1, num_tokens, keys)
    if padding_mask is not None:
        if padding_mask.dtype != torch.bool or padding_mask.shape[1:] != (past + num_tokens,):
            raise ValueError(f"padding_mask must be a bool tensor of shape (batch, {past + num_tokens}) "
                             f"(cached + new tokens), True at real tokens; got {padding_mask.dtype} "
                             f"{tuple(padding_mask.shape)}.")
        allowed = allowed & padding_mask[:, None, :] | (key_pos == query_pos)[None]
    return allowed[:, None]  # a heads dimension


# %% post_training/LLM-modern-open-model.ipynb, cell 48
class LlamaModel(nn.Module):
    """Token embeddings -> n_layers Llama blocks -> final RMSNorm -> logits: chapter 3's GPTModel
    without position embeddings (RoPE turns queries and keys inside attention instead) and
    without dropout. forward() takes chapter 4b's KV cache, and a padding mask for left-padded
    batches."""

    def __init__(self, cfg):
        super().__init__()
        check_llama_config(cfg)
        self.context_length = cfg["context_length"]  # the longest input, read by generation code
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.trf_blocks = nn.ModuleList([LlamaBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = RMSNorm(cfg["emb_dim"], cfg["norm_eps"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg["tie_weights"]:
            self.out_head.weight = self.tok_emb.weight  # one matrix at both ends

    check_token_ids = GPTModel.check_token_ids  # chapter 3's checks of in_idx, unchanged

    def forward(self, in_idx, kv_cache=None, padding_mask=None):
        """in_idx: (batch, num_tokens) ids. kv_cache: a list of one KVCache per block, or None;
        then in_idx holds the tokens after the cached ones. padding_mask: None, or a bool
        (batch, cached + num_tokens) tensor, False at the padding of left-padded rows."""
        self.check_token_ids(in_idx)
        caches = [None] * len(self.trf_blocks) if kv_cache is None else kv_cache
        if len(caches) != len(self.trf_blocks):
            raise ValueError(f"kv_cache has {len(caches)} entries but the model has {len(self.trf_blocks)} "
                             f"blocks; make one per block: [KVCache() for _ in model.trf_blocks].")
        num_tokens = in_idx.shape[1]
        past = 0 if not caches or caches[0] is None else caches[0].num_tokens  # tokens already cached
        check_fits(num_tokens, past, self.context_length, "the model")
        mask = attention_mask(num_tokens, past, padding_mask, in_idx.device)
        x = self.tok_emb(in_idx)
        for block, cache in zip(self.trf_blocks, caches):
            x = block(x, cache, mask)
        return self.out_head(self.final_norm(x))  # (batch, num_tokens, vocab_size)


# %% post_training/LLM-modern-open-model.ipynb, cell 55
def read_gguf(path):
    """Open a GGUF file (it is memory-mapped: nothing is read until used), with a clear error
    for a file that is not one, or is cut short."""
    from gguf import GGUFReader  # imported only when needed

    try:
        return GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it may be "
                              f"truncated or another format. Delete it and fetch it again.") from None


def gguf_config(reader):
    """The LlamaModel config written in a GGUF file's metadata."""
    def field(key):
        if key not in reader.fields:
            raise CheckpointError(f"The GGUF file has no {key!r} entry: it is not a complete Llama model file.")
        return reader.fields[key].contents()

    architecture = field("general.architecture")
    if architecture != "llama":
        raise CheckpointError(f"The GGUF file holds a {architecture!r} model; LlamaModel reads only 'llama' "
                              f"files (SmolLM2, Llama, and other models of the same layout).")
    return {
        "vocab_size": len(field("tokenizer.ggml.tokens")),
        "context_length": int(field("llama.context_length")),
        "emb_dim": int(field("llama.embedding_length")),
        "n_heads": int(field("llama.attention.head_count")),
        "n_kv_heads": int(field("llama.attention.head_count_kv")),
        "n_layers": int(field("llama.block_count")),
        "hidden_dim": int(field("llama.feed_forward_length")),
        "rope_base": float(field("llama.rope.freq_base")),
        "norm_eps": float(f'{field("llama.attention.layer_norm_rms_epsilon"):.6g}'),  # stored as float32
        "tie_weights": not any(tensor.name == "output.weight" for tensor in reader.tensors),
    }


# %% post_training/LLM-modern-open-model.ipynb, cell 58
class SmolLM2Tokenizer(GPT2Tokenizer):
    """Chapter 1b's byte-level BPE with SmolLM2's vocabulary, merges and special tokens, and one
    more pre-tokenizing rule: every digit is a piece of its own (GPT-2 keeps " 2026" whole)."""

    DIGIT = regex.compile(r"(\p{N})")  # the capturing group keeps the digits in split()'s output

    def __init__(self, tokens, merges, special_tokens, pad_id):
        super().__init__({token: i for i, token in enumerate(tokens)}, merges)
        self.special_tokens = dict(special_tokens)  # instead of GPT-2's one <|endoftext|>
        self.eos_id = self.special_tokens["<|im_end|>"]  # where an assistant's turn ends
        self.pad_id = pad_id

    @classmethod
    def from_gguf(cls, reader):
        """From the tokenizer a GGUF file carries in its metadata."""
        from gguf import TokenType

        tokens = reader.fields["tokenizer.ggml.tokens"].contents()
        kinds = reader.fields["tokenizer.ggml.token_type"].contents()
        merges = [tuple(merge.split(" ")) for merge in reader.fields["tokenizer.ggml.merges"].contents()]
        special = {token: i for i, (token, kind) in enumerate(zip(tokens, kinds)) if kind == TokenType.CONTROL}
        return cls(tokens, merges, special, reader.fields["tokenizer.ggml.padding_token_id"].contents())

    def encode_ordinary(self, text):
        """Chapter 1b's encode_ordinary on the text between digits; each digit on its own."""
        ids = []
        for piece in self.DIGIT.split(text) if isinstance(text, str) else [text]:  # 1b rejects a non-str
            if piece:
                ids.extend(super().encode_ordinary(piece))
        return ids

    def decode_bytes(self, ids):
        bad = [i for i in ids if not 0 <= i < self.n_vocab]
        if bad:
            raise ValueError(f"not a SmolLM2 token id: {bad[0]!r} (ids run from 0 to {self.n_vocab - 1})")
        return super().decode_bytes(ids)


# %% post_training/LLM-modern-open-model.ipynb, cell 70
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # its name in data/manifest.json

GGUF_NAMES = {  # a tensor's name in a GGUF file -> our parameter's name (N: the block number)
    "token_embd.weight": "tok_emb.weight",
    "blk.N.attn_norm.weight": "trf_blocks.N.norm1.scale",
    "blk.N.attn_q.weight": "trf_blocks.N.att.W_query.weight",  # rows in the pairs layout
    "blk.N.attn_k.weight": "trf_blocks.N.att.W_key.weight",  # rows in the pairs layout
    "blk.N.attn_v.weight": "trf_blocks.N.att.W_value.weight",
    "blk.N.attn_output.weight": "trf_blocks.N.att.out_proj.weight",
    "blk.N.ffn_norm.weight": "trf_blocks.N.norm2.scale",
    "blk.N.ffn_gate.weight": "trf_blocks.N.ff.gate.weight",
    "blk.N.ffn_up.weight": "trf_blocks.N.ff.up.weight",
    "blk.N.ffn_down.weight": "trf_blocks.N.ff.down.weight",
    "output_norm.weight": "final_norm.scale",
    "output.weight": "out_head.weight",  # absent when the head is tied to token_embd
}


# %% post_training/LLM-modern-open-model.ipynb, cell 71
def gguf_state_dict(reader):
    """Every tensor of the file, dequantized to float32 and named as in LlamaModel."""
    from gguf.quants import dequantize

    state = {}
    for tensor in reader.tensors:
        pattern = regex.sub(r"^blk\.\d+\.", "blk.N.", tensor.name)
        if pattern not in GGUF_NAMES:
            raise CheckpointError(f"The GGUF file has a tensor {tensor.name!r} that LlamaModel has no place for.")
        name = GGUF_NAMES[pattern].replace("N", tensor.name.split(".")[1]) if "N" in pattern else GGUF_NAMES[pattern]
        try:
            values = dequantize(tensor.data, tensor.tensor_type)  # GGUF's shape, reversed: (rows, columns)
        except (ValueError, NotImplementedError) as exc:
            raise CheckpointError(f"Cannot dequantize {tensor.name!r} ({tensor.tensor_type.name}): {exc}") from None
        state[name] = torch.tensor(values, dtype=torch.float32)  # a copy: the file stays read-only
    return state


def load_gguf(path_or_reader, device="cpu"):
    """(LlamaModel with the file's weights, in eval mode, float32, its tokenizer) from a GGUF file
    (its path, or the GGUFReader read_gguf made of it)."""
    reader = path_or_reader if hasattr(path_or_reader, "tensors") else read_gguf(path_or_reader)
    cfg = gguf_config(reader)
    state = gguf_state_dict(reader)
    if cfg["tie_weights"]:
        state["out_head.weight"] = state["tok_emb.weight"]
    with torch.device("meta"):  # shapes only: no time spent drawing random weights the file replaces
        model = LlamaModel(cfg)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or [n for n in expected if expected[n] != found[n]]
        raise CheckpointError(f"The GGUF file's tensors do not fit its own config (first differences: "
                              f"{wrong[:3]}); the file is damaged or not a plain Llama model.")
    model.load_state_dict(state, assign=True)  # the file's tensors become the parameters
    if cfg["tie_weights"]:
        model.out_head.weight = model.tok_emb.weight  # one parameter again, not two equal ones
    return model.to(device).eval(), SmolLM2Tokenizer.from_gguf(reader)


def load_smollm2(device="cpu"):
    """SmolLM2-135M-Instruct and its tokenizer, from the course's copy of its GGUF file."""
    return load_gguf(get_data_file(SMOLLM2_GGUF), device)


# %% post_training/LLM-modern-open-model.ipynb, cell 76
def to_hugging_face(model, cfg):
    """transformers' LlamaForCausalLM with model's weights (shared, not copied), W_q and W_k
    reordered from pairs to halves: an independent implementation to check ours against."""
    from transformers import LlamaConfig, LlamaForCausalLM  # imported only when needed

    hf_cfg = LlamaConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["emb_dim"], intermediate_size=cfg["hidden_dim"],
                         num_hidden_layers=cfg["n_layers"], num_attention_heads=cfg["n_heads"],
                         num_key_value_heads=cfg["n_kv_heads"], max_position_embeddings=cfg["context_length"],
                         rms_norm_eps=cfg["norm_eps"], rope_theta=cfg["rope_base"],
                         tie_word_embeddings=cfg["tie_weights"])
    state = {"model.embed_tokens.weight": model.tok_emb.weight, "model.norm.weight": model.final_norm.scale,
             "lm_head.weight": model.out_head.weight}
    for i, block in enumerate(model.trf_blocks):
        ours = {"self_attn.q_proj": pairs_to_halves(block.att.W_query.weight, cfg["n_heads"]),
                "self_attn.k_proj": pairs_to_halves(block.att.W_key.weight, cfg["n_kv_heads"]),
                "self_attn.v_proj": block.att.W_value.weight, "self_attn.o_proj": block.att.out_proj.weight,
                "mlp.gate_proj": block.ff.gate.weight, "mlp.up_proj": block.ff.up.weight,
                "mlp.down_proj": block.ff.down.weight, "input_layernorm": block.norm1.scale,
                "post_attention_layernorm": block.norm2.scale}
        state.update({f"model.layers.{i}.{name}.weight": tensor for name, tensor in ours.items()})
    with torch.device("meta"):  # shapes only: the weights come from ours
        hf = LlamaForCausalLM(hf_cfg)
    hf.load_state_dict({name: t.detach() for name, t in state.items()}, assign=True)
    if cfg["tie_weights"]:
        hf.tie_weights()
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf_cfg)  # its RoPE tables, on the CPU
    return hf.eval()


# %% post_training/LLM-modern-open-model.ipynb, cell 81
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # SmolLM2's default


def chat_prompt(messages, add_generation_prompt=True):
    """The ChatML text of a conversation, as SmolLM2's chat template writes it: each message is
    <|im_start|>role, a newline, its content, <|im_end|> and a newline; the default system
    prompt first when there is none; then the start of the assistant's turn."""
    if not messages or any(set(m) != {"role", "content"} or m["role"] not in ("system", "user", "assistant")
                           or not isinstance(m["content"], str) for m in messages):
        raise ValueError('messages must be a non-empty list of {"role": "system" | "user" | "assistant", '
                         '"content": str} dicts, e.g. [{"role": "user", "content": "Hi!"}]')
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# %% post_training/LLM-modern-open-model.ipynb, cell 84
class LeftPadded(nn.Module):
    """model seen through a batch of left-padded rows: forward() adds the padding mask, for any
    number of cached tokens, so chapter 4b's generate() drives it with the KV cache."""

    def __init__(self, model, num_padding):
        super().__init__()
        self.model, self.num_padding = model, num_padding  # num_padding: (batch,) pads per row
        self.trf_blocks, self.context_length = model.trf_blocks, model.context_length

    def forward(self, in_idx, kv_cache=None):
        past = 0 if kv_cache is None else kv_cache[0].num_tokens
        positions = torch.arange(past + in_idx.shape[1], device=in_idx.device)
        return self.model(in_idx, kv_cache=kv_cache, padding_mask=positions >= self.num_padding[:, None])


def generate_batch(model, prompts, max_new_tokens, eos_id, pad_id, temperature=0.0, top_k=None):
    """Continue several prompts (lists of token ids) at once with chapter 4b's generate(): left-pad
    them to one length and give the model the padding mask, then return each row's new tokens up
    to (not including) eos_id. Greedy rows get the tokens they get alone. A model whose forward
    takes no padding_mask (GPT-2: its learned positions would shift) runs the rows one by one."""
    if not prompts or any(not isinstance(p, (list, tuple)) or not p for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.context_length:
        raise ValueError(f"The longest prompt has {longest} tokens; with max_new_tokens={max_new_tokens} that "
                         f"needs {longest + max_new_tokens} positions, but the model supports at most "
                         f"context_length={model.context_length}. Shorten the prompt or ask for fewer tokens.")
    same_length = all(len(p) == longest for p in prompts)
    if not same_length and "padding_mask" not in inspect.signature(model.forward).parameters:
        return [generate_batch(model, [p], max_new_tokens, eos_id, pad_id, temperature, top_k)[0] for p in prompts]
    device = next(model.parameters()).device
    idx = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts], device=device)
    num_padding = torch.tensor([longest - len(p) for p in prompts], device=device)
    padded = model if same_length else LeftPadded(model, num_padding)
    out = generate(padded, idx, max_new_tokens, model.context_length, temperature, top_k, eos_id)
    rows = out[:, longest:].tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


def chat(model, tokenizer, question_or_messages, max_new_tokens=200, temperature=0.0, top_k=None):
    """The model's answer to a question (a str) or a conversation (a list of messages)."""
    messages = question_or_messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    ids = tokenizer.encode(chat_prompt(messages), allowed_special={"<|im_start|>", "<|im_end|>"})
    answer = generate_batch(model, [ids], max_new_tokens, tokenizer.eos_id, tokenizer.pad_id, temperature, top_k)
    return tokenizer.decode(answer[0])
