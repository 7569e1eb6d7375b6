"""Code the course's chapters taught, gathered so later chapters can import it.

Every class and function below the "Course infrastructure" section is taught in a chapter
notebook cell and kept identical there (tests/test_helpers_in_sync.py checks it). The
infrastructure section is not taught: it finds data files offline and prepares tiktoken.
"""
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
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
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as exc:
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
    """Causal multi-head self-attention: one matmul each for Q, K and V, split into heads."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
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
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        # A buffer, not a parameter: it moves with .to(device) but is never trained.
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1).bool(),
            persistent=False,
        )

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        if num_tokens > self.context_length:
            raise ValueError(
                f"The input has {num_tokens} tokens but this attention supports at most "
                f"context_length={self.context_length}; crop the input to its last "
                f"{self.context_length} tokens."
            )
        # (b, num_tokens, d_out) -> (b, num_heads, num_tokens, head_dim)
        queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
        values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        attn_scores = queries @ keys.transpose(2, 3)  # (b, num_heads, num_tokens, num_tokens)
        attn_scores = attn_scores.masked_fill(self.mask[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context = (attn_weights @ values).transpose(1, 2)  # (b, num_tokens, num_heads, head_dim)
        context = context.contiguous().view(b, num_tokens, self.d_out)
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
    if not 0.0 <= cfg["drop_rate"] < 1.0:
        raise ValueError(f"cfg['drop_rate'] must be in [0, 1) (got {cfg['drop_rate']!r}).")
    if cfg["emb_dim"] % cfg["n_heads"] != 0:
        raise ValueError(
            f"cfg['emb_dim'] ({cfg['emb_dim']}) must be divisible by cfg['n_heads'] "
            f"({cfg['n_heads']}): each head gets emb_dim / n_heads dimensions."
        )


class LayerNorm(nn.Module):
    """Normalise each token's features to mean 0 and variance 1, then scale and shift."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)  # biased, as in GPT-2 and nn.LayerNorm
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        return self.scale * norm_x + self.shift


class GELU(nn.Module):
    """GELU activation, tanh approximation (the one GPT-2 was trained with)."""

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
        ))


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

    def forward(self, x):
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(nn.Module):
    """Token + position embeddings -> n_layers transformer blocks -> final norm -> logits."""

    def __init__(self, cfg):
        super().__init__()
        check_config(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, in_idx):
        batch_size, seq_len = in_idx.shape
        tok_embeds = self.tok_emb(in_idx)
        pos_embeds = self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(tok_embeds + pos_embeds)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        return self.out_head(x)  # (batch_size, seq_len, vocab_size)


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding: append the most likely next token, max_new_tokens times."""
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

def get_device():
    """The fastest device here: CUDA, then Apple silicon (MPS), then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def text_to_token_ids(text, tokenizer):
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension


def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(token_ids.squeeze(0).tolist())


def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean loss over the first num_batches batches (all of them when None)."""
    if len(data_loader) == 0:
        raise ValueError("The data loader has no batches: its text is too short for one batch.")
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    model.eval()  # dropout off
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """Sample max_new_tokens tokens: greedy when temperature is 0 (or None), else softmax
    sampling of logits / temperature, optionally restricted to the top_k most likely tokens.
    Stops early when eos_id is generated (the eos token is kept in the output)."""
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature}); use 0 for greedy decoding.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k}), or None to keep every token.")
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)[:, -1, :]
        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < top_logits[:, -1:], -torch.inf)
        if temperature:
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        idx = torch.cat((idx, idx_next), dim=1)
        if eos_id is not None and (idx_next == eos_id).all():
            break
    return idx


def generate_and_print_sample(model, tokenizer, device, start_context):
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens=50, context_size=context_size)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer):
    """Train for num_epochs; every eval_freq steps print the train and validation losses.
    Returns the losses and the number of tokens seen at each evaluation."""
    if len(train_loader) == 0:
        raise ValueError("The training loader has no batches: its text is too short for one batch.")
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients accumulate by default: reset them every step
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


# ---------------------------------------------------------------------------------------------
# Stage 5: saving and loading (post_training/LLM-saving-loading.ipynb)
# ---------------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: damaged, truncated, or made for another model."""


def save_checkpoint(path, model, optimizer=None, config=None, step=None, **extra):
    """Write model (and optimizer) state atomically: a crash mid-save leaves the old file intact."""
    path = Path(path)
    state = {"model": model.state_dict(), "config": config, "step": step, **extra}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)  # atomic on POSIX and Windows
    except BaseException:
        os.unlink(tmp_name)
        raise


def load_checkpoint(path, model=None, optimizer=None, map_location="cpu"):
    """Load a checkpoint safely (weights_only=True: tensors and plain containers, no code),
    restore model and optimizer state if given, and return the whole checkpoint dict."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {type(exc).__name__}: {exc}"
        ) from None
    if model is not None:
        own = model.state_dict()
        missing = sorted(set(own) - set(state["model"]))
        unexpected = sorted(set(state["model"]) - set(own))
        wrong_shape = sorted(f"{k}: checkpoint {tuple(state['model'][k].shape)} vs model {tuple(v.shape)}"
                             for k, v in own.items() if k in state["model"] and state["model"][k].shape != v.shape)
        if missing or unexpected or wrong_shape:
            raise CheckpointError(
                f"{path} was saved from a model with a different config. Missing keys: {missing[:5]}; "
                f"unexpected keys: {unexpected[:5]}; mismatched sizes: {wrong_shape[:5]}"
            )
        model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


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
            return model, {**GPT_124M_CONFIG, "qkv_bias": True}, "OpenAI GPT-2 124M (pretrained weights)"
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


# TEMPORARY stand-in until stage 5 lands (the merge drops it)
def load_pretrained_gpt2(model_name="gpt2", models_dir=None):
    raise DataFileError(
        f"GPT-2 weights not available: the {model_name!r} weights are not in this course copy "
        f"yet (stage 5 adds the loader)."
    )
