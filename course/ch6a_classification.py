# Generated from finetune/LLM-finetune-classification.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-classification.ipynb, cell 4
import collections
import csv
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import tiktoken
import torch
import torch.nn as nn
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

from course.ch1_data import END_OF_TEXT_ID, GPTDatasetV1  # chapter 1
from course.ch4_training import GPT_SMALL_CONFIG, calc_loss_batch, get_device, train_model_simple  # chapter 4
from course.ch4b_performance import GPTModel, make_adamw  # chapter 3's model with 4b's KV cache; 4b's fused AdamW
from course.ch5_saving import GPT2_SIZES, gpt2_config, load_checkpoint, load_pretrained_gpt2, save_checkpoint  # chapter 5
from course.infra import DATA_DIR, DataFileError  # not taught


# %% finetune/LLM-finetune-classification.ipynb, cell 6
def read_sms_collection(path):
    """The SMS Spam Collection as (text, label) pairs: label 1 for spam, 0 for not spam. Read with
    the csv module, which parses the file as pandas does in Raschka's chapter 6, so the messages
    (and the split drawn from them) are the book's."""
    rows = []
    with open(path, newline="", encoding="utf-8") as file:
        for fields in csv.reader(file, delimiter="\t"):
            if len(fields) != 2 or fields[0] not in ("ham", "spam"):
                raise ValueError(f"{Path(path).name}: {fields!r} is not a label ('ham' or 'spam'), a tab "
                                 f"and a message.")
            label, text = fields
            rows.append((text, 1 if label == "spam" else 0))
    return rows


# %% finetune/LLM-finetune-classification.ipynb, cell 9
def create_balanced_dataset(rows, seed=123):
    # All spam messages plus as many randomly drawn normal ones, in a shuffled order: the draws of
    # Raschka's chapter 6 (pandas' sample(random_state=seed) is NumPy's RandomState(seed).permutation).
    spam = [row for row in rows if row[1] == 1]
    ham = [row for row in rows if row[1] == 0]
    picked = np.random.RandomState(seed).permutation(len(ham))[:len(spam)]
    balanced = [ham[i] for i in picked] + spam
    order = np.random.RandomState(seed).permutation(len(balanced))  # the book shuffles with a fresh generator
    return [balanced[i] for i in order]


# %% finetune/LLM-finetune-classification.ipynb, cell 12
def random_split(rows, train_frac, val_frac):
    train_end = int(len(rows) * train_frac)
    val_end = train_end + int(len(rows) * val_frac)
    return rows[:train_end], rows[train_end:val_end], rows[val_end:]


# %% finetune/LLM-finetune-classification.ipynb, cell 19
class SpamDataset(Dataset):
    """SMS messages as token ids, truncated to max_length and right-padded with pad_token_id
    (GPT-2's end-of-text), with their labels (1 = spam, 0 = not spam)."""

    def __init__(self, texts, labels, tokenizer, max_length, pad_token_id=END_OF_TEXT_ID):
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


# %% finetune/LLM-finetune-classification.ipynb, cell 24
STAND_IN_CONFIG = {**GPT_SMALL_CONFIG, "drop_rate": 0.0}  # chapter 4's small GPT; no dropout for a short pretraining

BASE_RECIPE = {
    "steps": 1000,           # batches of pretraining: about 5 passes over the SMS messages
    "batch_size": 8,
    "max_length": 64,        # SMS messages are short: a 64-token window holds one to a few of them
    "lr": 4e-3,
    "weight_decay": 0.1,
    "val_fraction": 0.1,     # the last texts, held out to measure the loss on
    "seed": 123,
    "min_count": 2,          # a token seen fewer times shares one output row with the other rare ones
}


# %% finetune/LLM-finetune-classification.ipynb, cell 26
def base_model_path(cfg, recipe, texts, models_dir=None):
    """Cache file of the stand-in base. Its name is a hash of the config, the recipe AND the
    pretraining texts, so changing any of them trains a new model instead of loading a stale one."""
    corpus = hashlib.sha256("\n<|endoftext|>\n".join(texts).encode("utf-8")).hexdigest()
    spec = json.dumps({"config": cfg, "recipe": recipe, "corpus": corpus}, sort_keys=True)
    key = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]
    models_dir = Path(models_dir) if models_dir is not None else DATA_DIR
    return models_dir / f"base-gpt-{key}.pth"


# %% finetune/LLM-finetune-classification.ipynb, cell 29
class CompactTokenizer:
    """GPT-2's tokenizer with its ids renumbered over the tokens a corpus uses, so that a model trained
    on it needs rows for those only. The tokens of `vocab` get compact ids 0, 1, ... and an output row
    each. The `rare` tokens share one output row, compact id `rare_id` (= len(vocab)), which no text
    encodes to and which decodes as "<|rare|>"; their own ids (for the embedding) come after it."""

    def __init__(self, tokenizer, vocab, rare=()):
        self.tokenizer = tokenizer
        self.vocab, self.rare = list(vocab), list(rare)
        self.rare_id = len(self.vocab)
        shared = [tokenizer.encode("<|rare|>")] if self.rare else []  # the shared row, spelled out
        self.pieces = [[t] for t in self.vocab] + shared + [[t] for t in self.rare]  # compact id -> GPT-2 ids
        self.compact_ids = {t: i for i, t in enumerate(self.vocab)}  # GPT-2 id -> compact id
        self.compact_ids.update({t: self.rare_id + 1 + i for i, t in enumerate(self.rare)})
        self.num_inputs = len(self.pieces)  # rows of the embedding
        self.num_outputs = self.rare_id + len(shared)  # rows of the output head

    def encode(self, text, **kwargs):
        token_ids = self.tokenizer.encode(text, **kwargs)
        unknown = [token_id for token_id in token_ids if token_id not in self.compact_ids]
        if unknown:
            raise ValueError(f"{self.tokenizer.decode(unknown[:5])!r}: token(s) outside the compact "
                             f"vocabulary of {len(self.compact_ids)} tokens; encode text from the corpus.")
        return [self.compact_ids[token_id] for token_id in token_ids]

    def decode(self, compact_ids):
        return self.tokenizer.decode([t for i in compact_ids for t in self.pieces[i]])

    def output_targets(self, compact_ids):
        """The output row that predicts each compact id (a tensor): its own, or the shared rare_id."""
        return compact_ids.clamp(max=self.rare_id)


def compact_tokenizer(texts, min_count):
    """A CompactTokenizer over the tokens of `texts` (joined by <|endoftext|>): the tokens seen at
    least min_count times get an output row each; the others share one."""
    tokenizer = tiktoken.get_encoding("gpt2")
    everything = "<|endoftext|>".join(texts)
    counts = collections.Counter(tokenizer.encode(everything, allowed_special={"<|endoftext|>"}))
    vocab = sorted(token_id for token_id, n in counts.items() if n >= min_count)
    rare = sorted(token_id for token_id, n in counts.items() if n < min_count)
    return CompactTokenizer(tokenizer, vocab, rare)


def to_full_vocabulary(compact_model, compact, cfg):
    """A GPTModel(cfg), with GPT-2's full vocabulary, holding compact_model's weights: each token the
    corpus used gets its trained embedding, and each token of compact.vocab its trained output row.
    The other output rows are zeros: the rare tokens' (one shared row predicted them all) and those
    of the tokens the corpus never used, which also keep GPTModel(cfg)'s random embedding."""
    model = GPTModel(cfg)
    state = model.state_dict()
    for name, tensor in compact_model.state_dict().items():
        if name == "tok_emb.weight":
            gpt2_ids, compact_ids = zip(*compact.compact_ids.items())
            state[name][list(gpt2_ids)] = tensor[list(compact_ids)]
        elif name == "out_head.weight":
            state[name].zero_()
            state[name][compact.vocab] = tensor[:len(compact.vocab)]
        else:
            state[name] = tensor
    model.load_state_dict(state)
    return model


# %% finetune/LLM-finetune-classification.ipynb, cell 33
def pretrain_base_model(cfg, recipe, texts):
    """Pretrain a GPTModel(cfg) from scratch on `texts` (a list of strings) with chapter 4's
    train_model_simple for recipe["steps"] batches, on a compact vocabulary (only the tokens the
    texts use; those seen fewer than recipe["min_count"] times share one output row), then return
    it with GPT-2's full vocabulary, on the CPU, in eval mode. Seeded: the same recipe and texts
    give the same model."""
    tokenizer = compact_tokenizer(texts, recipe["min_count"])
    num_val = max(1, int(recipe["val_fraction"] * len(texts)))
    train_text, val_text = ("<|endoftext|>".join(part) for part in (texts[:-num_val], texts[-num_val:]))
    torch.manual_seed(recipe["seed"])
    device = get_device()
    model = GPTModel({**cfg, "vocab_size": tokenizer.num_inputs})
    if tokenizer.rare:  # a smaller head: a row per token of tokenizer.vocab, and the shared one
        model.out_head = nn.Linear(cfg["emb_dim"], tokenizer.num_outputs, bias=False)
    model = model.to(device)
    windows = dict(tokenizer=tokenizer, max_length=recipe["max_length"], stride=recipe["max_length"])
    train_loader = DataLoader(GPTDatasetV1(train_text, **windows), batch_size=recipe["batch_size"],
                              shuffle=True, drop_last=True)
    val_loader = DataLoader(GPTDatasetV1(val_text, **windows), batch_size=recipe["batch_size"])
    passes = itertools.chain.from_iterable(itertools.repeat(train_loader))  # a new shuffle each pass
    batches = list(itertools.islice(passes, recipe["steps"]))

    def calc_loss(input_batch, target_batch, model, device):  # a rare token's target is the shared row
        return calc_loss_batch(input_batch, tokenizer.output_targets(target_batch), model, device)

    optimizer = make_adamw(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    train_model_simple(model, batches, val_loader, optimizer, device, num_epochs=1,
                       eval_freq=max(1, recipe["steps"] // 4), eval_iter=2,
                       start_context=" ".join(texts[0].split()[:4]), tokenizer=tokenizer, calc_loss=calc_loss)
    return to_full_vocabulary(model.to("cpu"), tokenizer, cfg).eval()


# %% finetune/LLM-finetune-classification.ipynb, cell 35
def load_base_model(name="gpt2", cfg=STAND_IN_CONFIG, recipe=BASE_RECIPE, texts=None, models_dir=None):
    """The base model to finetune, as (model, config, description).

    OpenAI's GPT-2 `name` ("gpt2", "gpt2-medium", "gpt2-large" or "gpt2-xl"), found in data/, the
    mirror folder or the Hugging Face cache, else downloaded, and hash-checked (chapter 5). When its
    weights cannot be had (or name is None), the course's stand-in: a GPTModel(cfg) pretrained on
    `texts` with `recipe` once, cached in data/ and loaded from there on every later run; a line
    says so, and why.
    """
    if name is not None:
        try:
            return load_pretrained_gpt2(name), gpt2_config(name), f"OpenAI's GPT-2 {GPT2_SIZES[name]}"
        except DataFileError as error:
            reason = str(error).splitlines()[0].rstrip(".")
            print(f"No GPT-2 {name!r} weights ({reason}): the base is the course's stand-in "
                  f"instead, and every result below comes from it.")
    if not texts:
        raise ValueError("The stand-in needs texts to pretrain on: pass texts=[...] (strings).")
    path = base_model_path(cfg, recipe, texts, models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):  # a second process waits, then loads it
        if path.is_file():
            model = GPTModel(cfg)
            load_checkpoint(path, model)
        else:
            model = pretrain_base_model(cfg, recipe, texts)
            save_checkpoint(path, model, config=cfg, recipe=recipe)
    num_params = sum(p.numel() for p in model.parameters())
    description = (f"the stand-in, a GPT of {cfg['n_layers']} layers of width {cfg['emb_dim']} "
                   f"({num_params / 1e6:.1f}M parameters) pretrained for {recipe['steps']} steps "
                   f"on {len(texts):,} texts")
    return model.eval(), cfg, description


# %% finetune/LLM-finetune-classification.ipynb, cell 44
BOOK_FINETUNE = {"trainable_blocks": 1, "train_embeddings": False, "lr": 5e-5, "weight_decay": 0.1,
                 "num_epochs": 5}  # GPT-2: Raschka's chapter 6
STAND_IN_FINETUNE = {"trainable_blocks": STAND_IN_CONFIG["n_layers"], "train_embeddings": True,
                     "lr": 3e-4, "weight_decay": 0.1, "num_epochs": 2}  # the stand-in: all of it


def make_classifier(model, num_classes=2, trainable_blocks=1, train_embeddings=False):
    """Turn a GPTModel into a classifier, in place: a new num_classes-way output head, and only the
    top `trainable_blocks` transformer blocks, the final LayerNorm and the head trainable (and the
    token and position embeddings if train_embeddings)."""
    num_blocks = len(model.trf_blocks)
    if not 0 <= trainable_blocks <= num_blocks:
        raise ValueError(f"trainable_blocks={trainable_blocks}, but the model has {num_blocks} blocks.")
    for param in model.parameters():
        param.requires_grad = False  # freeze everything ...
    model.out_head = nn.Linear(model.out_head.in_features, num_classes)  # ... add a new head ...
    trainable = [*model.trf_blocks[num_blocks - trainable_blocks:], model.final_norm, model.out_head]
    if train_embeddings:
        trainable += [model.tok_emb, model.pos_emb]
    for module in trainable:
        for param in module.parameters():
            param.requires_grad = True  # ... and unfreeze the top of the model
    return model


# %% finetune/LLM-finetune-classification.ipynb, cell 50
def last_real_token_logits(model, input_ids, pad_token_id=END_OF_TEXT_ID):
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


# %% finetune/LLM-finetune-classification.ipynb, cell 53
def calc_loss_batch_classifier(input_batch, target_batch, model, device):
    logits = last_real_token_logits(model, input_batch.to(device))  # (batch, 2)
    return nn.functional.cross_entropy(logits, target_batch.to(device))


def calc_loss_loader_classifier(data_loader, model, device, num_batches=None):
    """Mean classification loss over the first num_batches batches (all of them when None)."""
    losses = [calc_loss_batch_classifier(input_batch, target_batch, model, device).item()
              for input_batch, target_batch in itertools.islice(data_loader, num_batches)]
    if not losses:
        raise ValueError("The data loader has no batches, so there is no loss to average.")
    return sum(losses) / len(losses)


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for i, (input_batch, target_batch) in enumerate(data_loader):
            if i == num_batches:
                break
            predictions = last_real_token_logits(model, input_batch.to(device)).argmax(dim=-1)
            correct += (predictions == target_batch.to(device)).sum().item()
            seen += len(target_batch)
    return correct / seen


# %% finetune/LLM-finetune-classification.ipynb, cell 58
def evaluate_classifier(model, train_loader, val_loader, device, eval_iter):
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader_classifier(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader_classifier(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device,
                            num_epochs, eval_freq, eval_iter):
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    global_step = -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch_classifier(input_batch, target_batch, model, device)
            loss.backward()
            optimizer.step()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_classifier(model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                print(f"Ep {epoch + 1} (step {global_step:04d}): train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        train_accs.append(calc_accuracy_loader(train_loader, model, device, num_batches=eval_iter))
        val_accs.append(calc_accuracy_loader(val_loader, model, device))
        print(f"Ep {epoch + 1}: train accuracy {train_accs[-1]:.1%} (on {eval_iter} batches), "
              f"validation accuracy {val_accs[-1]:.1%}")
    return train_losses, val_losses, train_accs, val_accs


# %% finetune/LLM-finetune-classification.ipynb, cell 72
def classify(text, model, tokenizer, device, max_length=None, pad_token_id=END_OF_TEXT_ID):
    """'spam' or 'not spam' for one message, read at its last real token. Messages longer than
    max_length (default: the model's context length) are truncated to their first tokens."""
    context_length = model.context_length
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
