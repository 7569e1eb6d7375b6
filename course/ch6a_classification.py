# Generated from finetune/LLM-finetune-classification.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-classification.ipynb, cell 4
import hashlib
import itertools
import json
import random
from pathlib import Path

import tiktoken
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from course.ch1_data import END_OF_TEXT_ID, create_dataloader_v1  # chapter 1
from course.ch4_training import GPT_SMALL_CONFIG, calc_loss_batch, get_device, train_model_simple  # chapter 4
from course.ch4b_performance import GPTModel  # chapter 3's model, with chapter 4b's KV cache
from course.ch5_saving import gpt2_config, load_checkpoint, load_pretrained_gpt2, save_checkpoint  # chapter 5
from course.infra import DATA_DIR, DataFileError, get_data_file  # not taught


# %% finetune/LLM-finetune-classification.ipynb, cell 8
def create_balanced_dataset(rows, seed=123):
    # All spam messages plus as many randomly drawn normal ones, in a shuffled order.
    spam = [row for row in rows if row[1] == 1]
    ham = [row for row in rows if row[1] == 0]
    rng = random.Random(seed)  # a private generator: the same draw on every machine
    balanced = spam + rng.sample(ham, len(spam))
    rng.shuffle(balanced)
    return balanced


# %% finetune/LLM-finetune-classification.ipynb, cell 11
def random_split(rows, train_frac, val_frac):
    train_end = int(len(rows) * train_frac)
    val_end = train_end + int(len(rows) * val_frac)
    return rows[:train_end], rows[train_end:val_end], rows[val_end:]


# %% finetune/LLM-finetune-classification.ipynb, cell 18
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


# %% finetune/LLM-finetune-classification.ipynb, cell 23
BASE_RECIPE = {
    "texts": ["tinyshakespeare.txt", "the-verdict.txt"],
    "steps": 120,            # about a minute on a 2-core laptop CPU
    "batch_size": 4,
    "max_length": 128,       # full-context windows, so every position embedding gets trained
    "lr": 2e-3,
    "weight_decay": 0.1,
    "val_fraction": 0.1,     # the end of the text, held out to measure the loss on
    "seed": 123,
}


# %% finetune/LLM-finetune-classification.ipynb, cell 25
def base_model_path(cfg, recipe, models_dir=None):
    """Cache file of the self-pretrained base. Its name is a hash of the config AND the recipe,
    so changing either trains a new model instead of silently loading a stale one."""
    spec = json.dumps({"config": cfg, "recipe": recipe}, sort_keys=True)
    key = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:16]
    models_dir = Path(models_dir) if models_dir is not None else DATA_DIR
    return models_dir / f"base-gpt-{key}.pth"


# %% finetune/LLM-finetune-classification.ipynb, cell 28
def pretrain_base_model(cfg, recipe):
    """Pretrain a GPTModel(cfg) from scratch with chapter 4's train_model_simple for
    recipe["steps"] batches of the course's text files (seeded, so a rerun gives the same
    model). Returns the model on the CPU, in eval mode."""
    text = "<|endoftext|>".join(
        get_data_file(name).read_text(encoding="utf-8") for name in recipe["texts"]
    )
    split = int((1 - recipe["val_fraction"]) * len(text))
    torch.manual_seed(recipe["seed"])
    device = get_device()
    model = GPTModel(cfg).to(device)  # the first draws of the seed: a fresh GPTModel(cfg) after manual_seed
    windows = dict(batch_size=recipe["batch_size"], max_length=recipe["max_length"], stride=recipe["max_length"])
    train_loader = create_dataloader_v1(text[:split], shuffle=True, drop_last=True, **windows)
    val_loader = create_dataloader_v1(text[split:], shuffle=False, drop_last=False, **windows)
    batches = list(itertools.islice(itertools.cycle(train_loader), recipe["steps"]))  # steps batches
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    train_model_simple(model, batches, val_loader, optimizer, device, num_epochs=1,
                       eval_freq=max(1, recipe["steps"] // 4), eval_iter=2,
                       start_context="Every effort moves you", tokenizer=tiktoken.get_encoding("gpt2"))
    return model.to("cpu").eval()


# %% finetune/LLM-finetune-classification.ipynb, cell 30
def load_base_model(cfg=GPT_SMALL_CONFIG, recipe=BASE_RECIPE, models_dir=None, use_gpt2=True):
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


# %% finetune/LLM-finetune-classification.ipynb, cell 42
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


# %% finetune/LLM-finetune-classification.ipynb, cell 45
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


# %% finetune/LLM-finetune-classification.ipynb, cell 50
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


# %% finetune/LLM-finetune-classification.ipynb, cell 60
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
