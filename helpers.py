"""Code the course's chapters taught, gathered so later chapters can import it.

Every class and function below the "Course infrastructure" section is taught in a chapter
notebook cell and kept identical there (tests/test_helpers_in_sync.py checks it). The
infrastructure section is not taught: it finds data files offline and prepares tiktoken.
"""
import hashlib
import io
import json
import os
import pickle
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

# ---------------------------------------------------------------------------------------------
# Course infrastructure (not taught): data files found offline, verified by their SHA-256
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"
MIRROR_ENV = "LLM_DATA_MIRROR"


class DataFileError(FileNotFoundError):
    """A course data file is missing, unreachable or has the wrong SHA-256."""


def load_manifest(path=None):
    """The manifest: file name -> {url, sha256, size, ...}."""
    return json.loads(Path(path or DATA_DIR / "manifest.json").read_text(encoding="utf-8"))


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path, entry, where):
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise DataFileError(
            f"{path.name} in {where} has the wrong SHA-256 ({actual[:12]}..., expected "
            f"{entry['sha256'][:12]}...). It is damaged or a different file: delete {path} and "
            f"fetch it again from {entry['url']}"
        )
    return path


def _download(name, entry, data_dir):
    """Fetch the canonical URL into data_dir; a file that fails its hash is not kept."""
    with urllib.request.urlopen(entry["url"], timeout=30) as response:
        payload = response.read()
    if "archive_member" in entry:  # the file ships inside a zip archive
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            payload = archive.read(entry["archive_member"])
    actual = hashlib.sha256(payload).hexdigest()
    if actual != entry["sha256"]:
        raise DataFileError(
            f"The download of {name} from {entry['url']} has the wrong SHA-256 ({actual[:12]}..., "
            f"expected {entry['sha256'][:12]}...); it was not kept. Try again, or fetch the file "
            f"by hand and put it in {data_dir}/"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=data_dir, prefix=f".{name}.", delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, data_dir / name)  # atomic: a half-written file never has the real name
    return data_dir / name


def get_data_file(name, data_dir=None, mirror=None, manifest=None):
    """Return a verified local path to the course data file `name`.

    Looks in data_dir (default: data/), then in the mirror folder (default: $LLM_DATA_MIRROR),
    then downloads the manifest's URL into data_dir. Raises DataFileError with what to do when
    the file is missing everywhere and cannot be downloaded, or when its SHA-256 is wrong.
    """
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        raise KeyError(f"{name!r} is not a course data file; known files: {sorted(manifest)}")
    entry = manifest[name]
    data_dir = Path(data_dir) if data_dir is not None else DATA_DIR
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)

    local = data_dir / name
    if local.is_file():
        return _verified(local, entry, "data/")
    if mirror and (Path(mirror) / name).is_file():
        return _verified(Path(mirror) / name, entry, f"the mirror folder {mirror}")
    try:
        return _download(name, entry, data_dir)
    except DataFileError:  # downloaded, but with the wrong SHA-256: that message says it all
        raise
    except (OSError, zipfile.BadZipFile) as exc:  # no network, no such URL (URLError is an OSError)
        where = f"{MIRROR_ENV}={mirror}" if mirror else f"{MIRROR_ENV} (not set)"
        raise DataFileError(
            f"Course data file {name!r} was not found and could not be downloaded "
            f"({type(exc).__name__}: {exc}).\n"
            f"  Looked in: {data_dir}/ and {where}.\n"
            f"  To fix: download {entry['url']}"
            + (f" (the member {entry['archive_member']!r} of that zip)" if "archive_member" in entry else "")
            + f" and save it as {local}, or set {MIRROR_ENV} to a folder that holds {name}."
        ) from None


def prepare_tiktoken_offline():
    """Let tiktoken.get_encoding("gpt2") work with no network.

    tiktoken looks for its files in $TIKTOKEN_CACHE_DIR under the SHA-1 of their URL; we put
    the verified course copies there (data/.tiktoken unless the variable is already set).
    """
    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(DATA_DIR / ".tiktoken")))
    manifest = load_manifest()
    for name in ("encoder.json", "vocab.bpe"):
        target = cache / hashlib.sha1(manifest[name]["url"].encode()).hexdigest()
        if target.is_file() and sha256_of(target) == manifest[name]["sha256"]:
            continue
        source = get_data_file(name, manifest=manifest)
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
            tmp.write(source.read_bytes())
        os.replace(tmp.name, target)


prepare_tiktoken_offline()


# ---------------------------------------------------------------------------------------------
# Stage 1: data preprocessing (notebooks/LLM-data-preprocessing.ipynb)
# ---------------------------------------------------------------------------------------------

class GPTDatasetV1(Dataset):
    """Sliding windows over a tokenized text: each input is max_length tokens and its target
    is the same window shifted one token to the right (the next token at every position)."""

    def __init__(self, txt, tokenizer, max_length, stride):
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1 token (got {max_length}).")
        if stride < 1:
            raise ValueError(
                f"stride must be at least 1 token (got {stride}); stride = max_length gives "
                f"windows that touch without overlapping."
            )
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        if len(token_ids) < max_length + 1:
            raise ValueError(
                f"The text has {len(token_ids)} tokens, but one window needs max_length + 1 = "
                f"{max_length + 1} (the inputs plus the next token as target). Use a longer text "
                f"or a smaller max_length."
            )
        self.input_ids = []
        self.target_ids = []
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i:i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):
        return self.input_ids[idx], self.target_ids[idx]


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128,
                         shuffle=True, drop_last=True, num_workers=0):
    """A DataLoader of (input_ids, target_ids) batches over `txt`, tokenized with GPT-2's BPE."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size}).")
    tokenizer = tiktoken.get_encoding("gpt2")
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"The text gives {len(dataset)} windows, fewer than batch_size={batch_size}, so with "
            f"drop_last=True the loader would be empty. Use a smaller batch_size or stride, a "
            f"longer text, or drop_last=False."
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------
# Stage 2: attention (attention/LLM_attention.ipynb)
# ---------------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention: one matmul each for Q, K and V, split into heads.

    use_sdpa=True (the default) runs the attention through PyTorch's fused
    scaled_dot_product_attention; use_sdpa=False through the explicit masked softmax. Both
    compute the same function. kv_cache, a KVCache, lets generation reuse the keys and values
    of earlier tokens (training/LLM-performance.ipynb explains it)."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False, use_sdpa=True):
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

    def forward(self, x, kv_cache=None):
        b, num_tokens, d_in = x.shape
        past = 0 if kv_cache is None else kv_cache.num_tokens  # tokens already in the cache
        if past + num_tokens > self.context_length:
            raise ValueError(
                f"The input has {num_tokens} tokens"
                + (f" after {past} cached ones" if past else "")
                + f" but this attention supports at most context_length={self.context_length}; "
                f"crop the input to its last {self.context_length} tokens."
            )
        # (b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            keys, values = kv_cache.update(keys, values)  # now all past + num_tokens tokens
        future = self.mask[past:past + num_tokens, :past + num_tokens]  # the queries sit at past, past+1, ...

        if self.use_sdpa:
            context = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=None if past == 0 else ~future, is_causal=past == 0,
                dropout_p=self.dropout.p if self.training else 0.0,
            )  # (b, num_heads, num_tokens, head_dim)
        else:
            attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, past + num_tokens)
            attn_scores = attn_scores.masked_fill(future, -torch.inf)
            attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
            attn_weights = self.dropout(attn_weights)
            context = attn_weights @ values  # (b, num_heads, num_tokens, head_dim)

        context = context.transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)


# ---------------------------------------------------------------------------------------------
# Stage 3: the GPT architecture (architecture/LLM-GPT-arch.ipynb)
# ---------------------------------------------------------------------------------------------

GPT_124M_CONFIG = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # the longest input the model supports
    "emb_dim": 768,          # embedding dimension
    "n_heads": 12,           # attention heads
    "n_layers": 12,          # transformer blocks
    "drop_rate": 0.1,        # dropout rate
    "qkv_bias": False,       # bias in the query, key and value projections
}

GPT_FAMILY = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}


def check_config(cfg):
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


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift.
    The formula of the chapter, computed by PyTorch's fused layer_norm kernel."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)  # biased variance


class GELU(nn.Module):
    """GELU activation, tanh approximation (the one GPT-2 was trained with), in one fused kernel."""

    def forward(self, x):
        return F.gelu(x, approximate="tanh")


class FeedForward(nn.Module):
    """Expand each token to 4x the embedding size, apply GELU, project back."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            GELU(),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(
            d_in=cfg["emb_dim"], d_out=cfg["emb_dim"], context_length=cfg["context_length"],
            num_heads=cfg["n_heads"], dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"],
        )
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, kv_cache=None):
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """Token + position embeddings -> n_layers transformer blocks -> final norm -> logits.

    cfg["tie_weights"] (optional, default False) shares one matrix between the token embedding
    and the output head, as GPT-2 does. kv_cache, a list of one KVCache per block, lets
    generation feed only the new tokens (training/LLM-performance.ipynb explains it)."""

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_weights", False):
            self.out_head.weight = self.tok_emb.weight  # one matrix at both ends, as in GPT-2

    def forward(self, in_idx, kv_cache=None):
        if in_idx.dim() != 2:
            raise ValueError(
                f"in_idx must hold token ids of shape (batch_size, num_tokens), got shape "
                f"{tuple(in_idx.shape)}; for a single sequence add the batch dimension with "
                f"in_idx.unsqueeze(0)."
            )
        if kv_cache is not None and len(kv_cache) != len(self.trf_blocks):
            raise ValueError(
                f"kv_cache has {len(kv_cache)} entries but the model has {len(self.trf_blocks)} "
                f"blocks; make one per block: [KVCache() for _ in model.trf_blocks]."
            )
        seq_len = in_idx.shape[1]
        past = 0 if kv_cache is None else kv_cache[0].num_tokens  # tokens already in the cache
        if past + seq_len > self.pos_emb.num_embeddings:
            raise ValueError(
                f"The input has {seq_len} tokens"
                + (f" after {past} cached ones" if past else "")
                + f" but the model supports at most context_length={self.pos_emb.num_embeddings}; "
                f"crop it to its last {self.pos_emb.num_embeddings} tokens, e.g. "
                f"in_idx[:, -context_length:]."
            )
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb.weight[past:past + seq_len]  # = pos_emb(arange(past, past + seq_len))
        x = self.drop_emb(tok_embeds + pos_embeds)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if kv_cache is None else kv_cache[i])
        x = self.final_norm(x)
        return self.out_head(x)  # (batch_size, seq_len, vocab_size)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token, max_new_tokens times."""
    if context_size < 1:
        raise ValueError(
            f"context_size must be at least 1 (got {context_size}); pass the model's "
            f"context_length, e.g. model.pos_emb.num_embeddings."
        )
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # crop to the context the model supports
        with torch.no_grad():
            logits = model(idx_cond)
        next_id = torch.argmax(logits[:, -1, :], dim=-1, keepdim=True)
        idx = torch.cat((idx, next_id), dim=1)
    return idx


# ---------------------------------------------------------------------------------------------
# Stage 4: training (training/LLM-training.ipynb)
# ---------------------------------------------------------------------------------------------

GPT_SMALL_CONFIG = {
    "vocab_size": 50257,    # GPT-2's BPE vocabulary, so GPT-2's tokenizer still works
    "context_length": 128,  # shorter windows: the-verdict has only about 5,000 tokens
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


def get_device():
    """The fastest device here: CUDA, then Apple silicon (MPS), then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def text_to_token_ids(text, tokenizer):
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension: (1, num_tokens)


def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(token_ids.squeeze(0).tolist())  # drop the batch dimension


def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, num_tokens, vocab_size)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean loss over the first num_batches batches (all of them when None)."""
    if len(data_loader) == 0:
        raise ValueError(
            "The data loader has no batches, so there is no loss to average. Its text is too "
            "short for one batch: use a smaller batch_size or max_length, or drop_last=False."
        )
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be at least 1 (got {num_batches}), or None for all batches.")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()  # dropout off: the loss measures the model, not a random sub-network
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             use_cache=True):
    """Append up to max_new_tokens tokens to idx (batch, num_tokens): greedy when temperature
    is 0 or None, else sampled from softmax(logits / temperature), optionally only among the
    top_k most likely tokens. Stops early once every sequence has produced eos_id (kept).
    use_cache=True (for a GPTModel) keeps every layer's keys and values, so each step feeds only
    the new token: the same tokens, faster (training/LLM-performance.ipynb explains it)."""
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature}); use 0 for greedy decoding.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k}), or None to keep every token.")
    if context_size < 1:
        raise ValueError(f"context_size must be at least 1 (got {context_size}); use the model's context_length.")
    use_cache = use_cache and isinstance(model, GPTModel)  # other models cannot take a cache
    kv_cache = None
    for _ in range(max_new_tokens):
        with torch.no_grad():
            if not use_cache:
                logits = model(idx[:, -context_size:])[:, -1, :]  # crop to the context the model supports
            elif kv_cache is None or kv_cache[0].num_tokens >= context_size:  # first step, or the window is full
                kv_cache = [KVCache() for _ in model.trf_blocks]  # rebuild from the cropped window
                logits = model(idx[:, -context_size:], kv_cache=kv_cache)[:, -1, :]
            else:
                logits = model(idx[:, -1:], kv_cache=kv_cache)[:, -1, :]  # only the newest token
        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < top_logits[:, -1:], -torch.inf)
        if temperature:
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (batch, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch, 1)
        idx = torch.cat((idx, idx_next), dim=1)
        if eos_id is not None and (idx_next == eos_id).all():
            break
    return idx


def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50):
    """Print a greedy continuation of start_context on one line (a progress check, not a demo)."""
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens=max_new_tokens,
                                     context_size=context_size)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, is_main_process=True):
    """Train for num_epochs; every eval_freq steps print the train and validation losses,
    after each epoch print a sample. Returns the losses and the tokens seen at each evaluation.

    Under DistributedDataParallel (training/train_ddp.py) every process trains, but only the one
    with is_main_process=True evaluates and prints; the others return empty lists."""
    if len(train_loader) == 0:
        raise ValueError(
            "The training loader has no batches, so there is nothing to train on. Its text is too "
            "short for one batch: use a smaller batch_size or max_length, or drop_last=False."
        )
    if eval_freq < 1:
        raise ValueError(f"eval_freq must be at least 1 step (got {eval_freq}).")
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    plain_model = getattr(model, "module", model)  # the GPTModel inside a DDP wrapper, if any
    for epoch in range(num_epochs):
        model.train()  # dropout on
        sampler = getattr(train_loader, "sampler", None)  # a plain list of batches has none
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a DistributedSampler: a new shuffle each epoch
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients accumulate by default: reset them every step
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()  # d loss / d every parameter
            optimizer.step()  # move every parameter a little against its gradient
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0 and is_main_process:
                # the plain model: a DDP wrapper's forward may sync buffers, waiting for every process
                train_loss, val_loss = evaluate_model(plain_model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        if is_main_process:
            generate_and_print_sample(plain_model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


# ---------------------------------------------------------------------------------------------
# Stage 5: saving and loading (post_training/LLM-saving-loading.ipynb)
# ---------------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: damaged, truncated, or made for another model."""


def save_checkpoint(path, model, optimizer=None, config=None, step=None, **extra):
    """Write model (and optimizer) state atomically: a crash mid-save leaves the old file intact.

    The checkpoint also holds the random number generators' state, so that resuming with
    load_checkpoint(..., restore_rng=True) draws the same dropout masks and shuffles."""
    reserved = {"model", "optimizer", "config", "step", "rng_state"} & set(extra)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are names save_checkpoint uses itself; pick other names.")
    path = Path(path)
    state = {
        "model": model.state_dict(),
        "config": config,
        "step": step,
        "rng_state": {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        **extra,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the file gets its real name
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException:
        os.unlink(tmp_name)
        raise


def load_checkpoint(path, model=None, optimizer=None, map_location="cpu", restore_rng=False):
    """Load a checkpoint safely (weights_only=True: tensors and plain containers, no code),
    restore model and optimizer state if given, and return the whole checkpoint dict.

    restore_rng=True also restores the random number generators, for an exact resume."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save writes a zip with a CRC-32 per member
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"{path} is damaged: its part {damaged!r} fails its CRC-32 check.")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, CheckpointError):
        raise
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
        reason = next((line for line in lines if "Unsupported global" in line), lines[-1])
        raise CheckpointError(
            f"{path} holds Python objects that weights_only=True refuses to load, because loading "
            f"them could run code ({reason.split('. ')[0]}). Load it with "
            f"torch.load(path, weights_only=False) only if you trust where the file came from."
        ) from None
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {type(exc).__name__}: {reason}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} has no 'model' entry, so save_checkpoint did not write it. If it is a bare "
            f"state_dict, load it with model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if model is not None:
        own, saved = model.state_dict(), state["model"]
        problems = []
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        wrong_shape = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                       for k, v in own.items() if k in saved and saved[k].shape != v.shape]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mismatched sizes", wrong_shape)):
            if items:
                problems.append(f"{len(items)} {label}: {items[:5]}" + (" ..." if len(items) > 5 else ""))
        if problems:
            raise CheckpointError(
                f"{path} was saved from a model with a different config; "
                + "; ".join(problems)
                + ". Build the model from the checkpoint's own 'config' entry before loading."
            )
        model.load_state_dict(saved)
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{path} was saved without optimizer state; pass optimizer=None.")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        if "rng_state" not in state:
            raise CheckpointError(f"{path} holds no random number generator state; use restore_rng=False.")
        torch.set_rng_state(state["rng_state"]["cpu"].cpu())
        if torch.cuda.is_available() and state["rng_state"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_state"]["cuda"]])
    return state


GPT2_SIZES = {  # model name on the Hugging Face hub -> its size in GPT_FAMILY
    "gpt2": "gpt2-small (124M)",
    "gpt2-medium": "gpt2-medium (355M)",
    "gpt2-large": "gpt2-large (774M)",
    "gpt2-xl": "gpt2-xl (1558M)",
}

GPT2_URL = "https://huggingface.co/openai-community/{model_name}/resolve/main/model.safetensors"

GPT2_FILES = {  # published size and SHA-256 of the files we could check
    "gpt2": {"size": 548_105_171,
             "sha256": "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"},
}


def gpt2_config(model_name="gpt2"):
    """The GPTModel config of OpenAI's GPT-2 `model_name`."""
    if model_name not in GPT2_SIZES:
        raise ValueError(f"Unknown GPT-2 model {model_name!r}; choose one of {list(GPT2_SIZES)}.")
    return {**GPT_124M_CONFIG, **GPT_FAMILY[GPT2_SIZES[model_name]],
            "context_length": 1024, "qkv_bias": True, "drop_rate": 0.0}


def display_path(path):
    """path relative to the course folder when it lies inside it: the same on every machine."""
    path = Path(path).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def download_file(url, dest, expected_size=None, expected_sha256=None, timeout=30):
    """Stream url into dest with a progress line. The bytes go to dest + '.part' first, so an
    interrupted download resumes (HTTP Range) where it stopped; only a file of the right size
    and SHA-256 is renamed to dest."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:  # 416: nothing left after `done` bytes, the .part file is complete
            raise
        response = None
    total = expected_size
    if response is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with response, open(part, "ab" if response.status == 206 else "wb") as f:
            if response.status != 206:  # the server sent the whole file, not the rest
                done = 0
            length = response.headers.get("Content-Length")
            if total is None and length is not None:
                total = done + int(length)
            shown = None
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                done += len(chunk)
                if total and 100 * done // total != shown:
                    shown = 100 * done // total
                    print(f"\r{dest.name}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB ({shown}%)",
                          end="", flush=True)
            f.flush()
            os.fsync(f.fileno())
        print()
    size = part.stat().st_size
    if total and size != total:
        if size > total:
            part.unlink()
        raise DataFileError(
            f"The download of {url} stopped at {size:,} of {total:,} bytes"
            + (": run it again to resume." if size < total else "; the file was deleted.")
        )
    if expected_sha256 and sha256_of(part) != expected_sha256:
        part.unlink()
        raise DataFileError(f"The download of {url} has the wrong SHA-256; it was deleted: try again.")
    os.replace(part, dest)
    return dest


def gpt2_weights_path(model_name="gpt2", models_dir=None):
    """A verified local path to GPT-2's model.safetensors: found in models_dir (default
    data/gpt2) or the data mirror folder, else downloaded; DataFileError if neither works."""
    gpt2_config(model_name)  # fails early on an unknown name
    models_dir = Path(models_dir) if models_dir is not None else DATA_DIR / "gpt2"
    path = models_dir / model_name / "model.safetensors"
    url = GPT2_URL.format(model_name=model_name)
    known = GPT2_FILES.get(model_name, {})
    mirror = os.environ.get(MIRROR_ENV)
    for candidate in [path] + ([Path(mirror) / "gpt2" / model_name / "model.safetensors"] if mirror else []):
        if candidate.is_file():
            if known and (candidate.stat().st_size != known["size"] or sha256_of(candidate) != known["sha256"]):
                raise DataFileError(
                    f"{display_path(candidate)} is not the published {model_name} model.safetensors (wrong size "
                    f"or SHA-256): delete it and download {url} again."
                )
            return candidate
    try:
        return download_file(url, path, known.get("size"), known.get("sha256"))
    except DataFileError:
        raise
    except OSError as exc:  # no network, HTTP error, timeout (URLError is an OSError)
        raise DataFileError(
            f"{display_path(path)} is missing and the download from {url} failed "
            f"({type(exc).__name__}: {exc}); download that URL yourself and save it as "
            f"{display_path(path)}"
        ) from None


def assign_weight(param, tensor, name):
    """Copy tensor into param, or say which tensor does not fit (a config that does not match)."""
    if param is None:
        raise ValueError(f"{name}: the model has no parameter for this tensor; build it with qkv_bias=True.")
    if param.shape != tensor.shape:
        raise ValueError(
            f"{name}: the file's tensor has shape {tuple(tensor.shape)} but the model expects "
            f"{tuple(param.shape)}; build the model with the config of these weights."
        )
    with torch.no_grad():
        param.copy_(tensor)


def load_gpt2_params(model, params):
    """Copy GPT-2 tensors, named as OpenAI/Hugging Face publish them, into our GPTModel."""
    # Keys may start with "transformer."; "h.N.attn.bias" and "h.N.attn.masked_bias" are the
    # causal mask and its fill value, buffers our attention makes itself (note: "c_attn.bias"
    # does not end with ".attn.bias", so the real QKV bias is kept).
    params = {k.removeprefix("transformer."): v.float() for k, v in params.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    used = set()

    def take(name):
        if name not in params:
            raise ValueError(f"The weights have no tensor {name!r}: they are not a GPT-2 of this size.")
        used.add(name)
        return params[name]

    assign_weight(model.tok_emb.weight, take("wte.weight"), "wte.weight")
    assign_weight(model.pos_emb.weight, take("wpe.weight"), "wpe.weight")
    for i, block in enumerate(model.trf_blocks):
        h = f"h.{i}."
        # Conv1D stores weights as (in, out), nn.Linear as (out, in): transpose every matrix.
        # c_attn is Q, K and V side by side: (emb, 3 * emb) -> three (emb, emb) matrices.
        q_w, k_w, v_w = take(h + "attn.c_attn.weight").chunk(3, dim=-1)
        q_b, k_b, v_b = take(h + "attn.c_attn.bias").chunk(3, dim=-1)
        att = block.att
        for linear, w, b, part in ((att.W_query, q_w, q_b, "Q"), (att.W_key, k_w, k_b, "K"),
                                   (att.W_value, v_w, v_b, "V")):
            assign_weight(linear.weight, w.T, f"{h}attn.c_attn.weight ({part} part)")
            assign_weight(linear.bias, b, f"{h}attn.c_attn.bias ({part} part)")
        assign_weight(att.out_proj.weight, take(h + "attn.c_proj.weight").T, h + "attn.c_proj.weight")
        assign_weight(att.out_proj.bias, take(h + "attn.c_proj.bias"), h + "attn.c_proj.bias")
        fc, proj = block.ff.layers[0], block.ff.layers[2]
        assign_weight(fc.weight, take(h + "mlp.c_fc.weight").T, h + "mlp.c_fc.weight")
        assign_weight(fc.bias, take(h + "mlp.c_fc.bias"), h + "mlp.c_fc.bias")
        assign_weight(proj.weight, take(h + "mlp.c_proj.weight").T, h + "mlp.c_proj.weight")
        assign_weight(proj.bias, take(h + "mlp.c_proj.bias"), h + "mlp.c_proj.bias")
        for norm, ln in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            assign_weight(norm.scale, take(f"{h}{ln}.weight"), f"{h}{ln}.weight")
            assign_weight(norm.shift, take(f"{h}{ln}.bias"), f"{h}{ln}.bias")
    assign_weight(model.final_norm.scale, take("ln_f.weight"), "ln_f.weight")
    assign_weight(model.final_norm.shift, take("ln_f.bias"), "ln_f.bias")
    # GPT-2 ties its output head to the token embedding; files usually store it only once.
    head = "lm_head.weight" if "lm_head.weight" in params else "wte.weight"
    assign_weight(model.out_head.weight, take(head), head)
    unused = sorted(set(params) - used)
    if unused:
        raise ValueError(
            f"The weights have {len(unused)} tensor(s) the model has no place for, e.g. "
            f"{unused[:3]}: the config has fewer layers than these weights."
        )
    return model


def load_gpt2_safetensors(path, cfg):
    """A GPTModel built from cfg holding the GPT-2 weights stored in the safetensors file path."""
    try:
        params = load_file(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataFileError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); delete it "
            f"and fetch it again."
        ) from None
    model = GPTModel(cfg)
    load_gpt2_params(model, params)
    return model.eval()


def load_pretrained_gpt2(model_name="gpt2", models_dir=None):
    """OpenAI's pretrained GPT-2 `model_name` as a GPTModel in eval mode (downloaded once)."""
    return load_gpt2_safetensors(gpt2_weights_path(model_name, models_dir), gpt2_config(model_name))


# ---------------------------------------------------------------------------------------------
# Performance: fast training steps and KV-cache generation (training/LLM-performance.ipynb)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Stage 6: finetuning (finetune/LLM-finetune-classification.ipynb, finetune/LLM-finetune-instructions.ipynb)
# ---------------------------------------------------------------------------------------------

BASE_CONFIG = {
    "vocab_size": 50257,     # GPT-2's tokenizer, so the end-of-text id 50256 exists
    "context_length": 128,   # room for a 64-token SMS and for every instruction example
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 4,
    "drop_rate": 0.0,
    "qkv_bias": False,
}

BASE_RECIPE = {
    "texts": ["tinyshakespeare.txt", "the-verdict.txt"],
    "steps": 120,            # about a minute on a 2-core laptop CPU
    "batch_size": 4,
    "max_length": 128,       # full-context windows, so every position embedding gets trained
    "lr": 2e-3,
    "weight_decay": 0.1,
    "seed": 123,
}


def base_model_path(cfg, recipe, models_dir=None):
    """Cache file of the self-pretrained base. Its name is a hash of the config AND the recipe,
    so changing either trains a new model instead of silently loading a stale one."""
    spec = json.dumps({"config": cfg, "recipe": recipe}, sort_keys=True)
    key = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]
    models_dir = Path(models_dir) if models_dir is not None else DATA_DIR
    return models_dir / f"base-gpt-{key}.pth"


def pretrain_base_model(cfg, recipe):
    """Pretrain a GPTModel(cfg) from scratch for recipe["steps"] steps on the course's text
    files (seeded, so a rerun gives the same model). Returns the model in eval mode."""
    text = "<|endoftext|>".join(
        get_data_file(name).read_text(encoding="utf-8") for name in recipe["texts"]
    )
    torch.manual_seed(recipe["seed"])
    loader = create_dataloader_v1(text, batch_size=recipe["batch_size"], max_length=recipe["max_length"],
                                  stride=recipe["max_length"], shuffle=True, drop_last=True)
    device = get_device()
    model = GPTModel(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    model.train()
    step = 0
    while step < recipe["steps"]:  # as many passes over the text as the steps need
        for input_batch, target_batch in loader:
            optimizer.zero_grad()
            calc_loss_batch(input_batch, target_batch, model, device).backward()
            optimizer.step()
            step += 1
            if step == recipe["steps"]:
                break
    return model.to("cpu").eval()


def load_base_model(cfg=BASE_CONFIG, recipe=BASE_RECIPE, models_dir=None, use_gpt2=True):
    """The best base model available, as (model, config, description).

    OpenAI's GPT-2 124M when its weights can be loaded (and use_gpt2 is True); otherwise the
    course's own small GPT: pretrained once with `recipe`, cached in data/, loaded from there
    on every later run.
    """
    if use_gpt2:
        try:
            model = load_pretrained_gpt2("gpt2")
            return model, gpt2_config("gpt2"), "OpenAI GPT-2 124M (pretrained weights)"
        except DataFileError:
            pass
    path = base_model_path(cfg, recipe, models_dir)
    if path.is_file():
        model = GPTModel(cfg)
        load_checkpoint(path, model)
        how = "loaded from the cache"
    else:
        model = pretrain_base_model(cfg, recipe)
        save_checkpoint(path, model, config=cfg, recipe=recipe)
        how = "pretrained now, then cached"
    num_params = sum(p.numel() for p in model.parameters())
    description = (f"self-pretrained GPT ({cfg['n_layers']} layers, {cfg['emb_dim']}-dim, "
                   f"{num_params / 1e6:.1f}M parameters; {recipe['steps']} steps on "
                   f"{' + '.join(recipe['texts'])}), {how}")
    return model.eval(), cfg, description


class SpamDataset(Dataset):
    """SMS messages as token ids, truncated to max_length and right-padded with pad_token_id
    (GPT-2's end-of-text), with their labels (1 = spam, 0 = not spam)."""

    def __init__(self, texts, labels, tokenizer, max_length, pad_token_id=50256):
        if len(texts) != len(labels):
            raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels: one label per text.")
        self.labels = list(labels)
        self.max_length = max_length
        self.num_truncated = 0
        self.encoded_texts = []
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"Message {i} ({text!r}) has no text: remove empty messages first.")
            token_ids = tokenizer.encode(text)
            if len(token_ids) > max_length:
                self.num_truncated += 1
                token_ids = token_ids[:max_length]  # keep the beginning of a long message
            self.encoded_texts.append(token_ids + [pad_token_id] * (max_length - len(token_ids)))

    def __getitem__(self, index):
        return torch.tensor(self.encoded_texts[index]), torch.tensor(self.labels[index])

    def __len__(self):
        return len(self.encoded_texts)


def last_real_token_logits(model, input_ids, pad_token_id=50256):
    """The model's outputs at each row's last REAL token, (batch, num_classes).

    Rows are right-padded, so for every shorter message the last position holds padding.
    The tokenizer never emits the end-of-text id for ordinary text, so the real tokens of a
    row are the ones that are not pad_token_id, and the last one sits at num_real - 1.
    """
    num_real = (input_ids != pad_token_id).sum(dim=1)  # (batch,)
    if (num_real == 0).any():
        raise ValueError("A row holds only padding: every message needs at least one real token.")
    logits = model(input_ids)  # (batch, num_tokens, num_classes)
    return logits[torch.arange(input_ids.shape[0], device=input_ids.device), num_real - 1]


def classify(text, model, tokenizer, device, max_length=None, pad_token_id=50256):
    """'spam' or 'not spam' for one message, read at its last real token. Messages longer than
    max_length (default: the model's context length) are truncated to their first tokens."""
    context_length = model.pos_emb.weight.shape[0]
    max_length = context_length if max_length is None else max_length
    if not 1 <= max_length <= context_length:
        raise ValueError(f"max_length={max_length} does not fit the model's context of "
                         f"{context_length} tokens: use 1 <= max_length <= {context_length}.")
    if not text.strip():
        raise ValueError(f"The message {text!r} has no text: give classify a non-empty message.")
    token_ids = tokenizer.encode(text)[:max_length]
    input_ids = torch.tensor(token_ids, device=device).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        logits = last_real_token_logits(model, input_ids, pad_token_id)
    return "spam" if logits.argmax(dim=-1).item() == 1 else "not spam"


def format_input(entry):
    """The Alpaca prompt for one entry, ending where the model's response begins."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text + "\n\n### Response:\n"


class InstructionDataset(Dataset):
    """Each entry as (token ids of prompt + response, number of prompt tokens)."""

    def __init__(self, data, tokenizer):
        self.items = []
        for i, entry in enumerate(data):
            missing = [key for key in ("instruction", "input", "output") if key not in entry]
            if missing:
                raise ValueError(f"Entry {i} lacks the key(s) {missing}; each entry needs "
                                 f"'instruction', 'input' (may be empty) and 'output'.")
            prompt_ids = tokenizer.encode(format_input(entry))
            response_ids = tokenizer.encode(entry["output"])
            self.items.append((prompt_ids + response_ids, len(prompt_ids)))

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self):
        return len(self.items)


def instruction_collate_fn(batch, pad_token_id=50256, ignore_index=-100,
                           allowed_max_length=None, mask_prompt=True):
    """Pad a batch of (token_ids, prompt_length) to one length and shift it into (inputs, targets).

    Every sequence gets at least one end-of-text token; that first one stays in the targets (the
    model must learn to stop), the rest of the padding becomes ignore_index, and so does the
    prompt when mask_prompt is True: cross_entropy skips ignore_index targets.
    """
    if not batch:
        raise ValueError("The batch is empty.")
    batch_max_length = max(len(token_ids) + 1 for token_ids, _ in batch)
    inputs_lst, targets_lst = [], []
    for i, (token_ids, prompt_length) in enumerate(batch):
        padded = token_ids + [pad_token_id] * (batch_max_length - len(token_ids))
        inputs = torch.tensor(padded[:-1])   # (batch_max_length - 1,)
        targets = torch.tensor(padded[1:])   # the next token at every position
        targets[len(token_ids):] = ignore_index  # all padding but the first end-of-text
        if mask_prompt:
            targets[:prompt_length - 1] = ignore_index  # predictions of prompt tokens
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        if (targets == ignore_index).all():
            raise ValueError(
                f"Example {i} of the batch keeps no target token: its prompt has {prompt_length} "
                f"tokens and allowed_max_length is {allowed_max_length}. Raise allowed_max_length "
                f"or drop examples whose prompt does not fit."
            )
        inputs_lst.append(inputs)
        targets_lst.append(targets)
    return torch.stack(inputs_lst), torch.stack(targets_lst)
