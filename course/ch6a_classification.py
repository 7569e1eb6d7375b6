# Generated from finetune/LLM-finetune-classification.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-classification.ipynb, cell 4
import csv
import re
from pathlib import Path

import numpy as np
import tiktoken
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from course.ch1_data import END_OF_TEXT_ID  # chapter 1
from course.ch3_architecture import GPTModel  # chapter 3
from course.ch4b_performance import use_bf16  # chapter 4b
from course.ch5_saving import GPT2_SIZES, gpt2_config, load_pretrained_gpt2  # chapter 5
from course.ch5b_modern import SMOLLM2_135M_CONFIG, LlamaModel, load_smollm2  # chapter 5b


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


# %% finetune/LLM-finetune-classification.ipynb, cell 15
def words(text):
    """The lower-cased words of text: runs of letters, digits and underscores."""
    return re.findall(r"\w+", text.lower())


def word_counts(texts, vocab):
    """How often each word of vocab (a dict word -> column) occurs in each text: (len(texts), len(vocab))."""
    counts = torch.zeros(len(texts), len(vocab))
    for row, text in enumerate(texts):
        for word in words(text):
            if word in vocab:  # a word the training texts never had tells us nothing
                counts[row, vocab[word]] += 1
    return counts


class NaiveBayes:
    """Multinomial Naive Bayes on word counts, with add-alpha (Laplace) smoothing."""

    def __init__(self, texts, labels, num_classes=2, alpha=1.0):
        if not texts or len(texts) != len(labels):
            raise ValueError(f"Got {len(texts)} texts and {len(labels)} labels: give one label per text, "
                             f"and at least one text.")
        labels = torch.as_tensor(labels)
        self.vocab = {word: i for i, word in enumerate(sorted({w for text in texts for w in words(text)}))}
        counts = word_counts(texts, self.vocab)  # (texts, vocabulary)
        per_class = torch.stack([counts[labels == c].sum(dim=0) for c in range(num_classes)]) + alpha
        self.log_likelihood = (per_class / per_class.sum(dim=1, keepdim=True)).log()  # log P(w | c)
        self.log_prior = (torch.bincount(labels, minlength=num_classes) / len(labels)).log()  # log P(c)

    def predict(self, texts):
        scores = word_counts(texts, self.vocab) @ self.log_likelihood.T + self.log_prior  # (texts, classes)
        return scores.argmax(dim=1)


# %% finetune/LLM-finetune-classification.ipynb, cell 19
BASE_MODELS = {"smollm2": "SmolLM2-135M-Instruct (chapter 5b)",
               **{name: f"OpenAI's GPT-2 {size} (chapter 5)" for name, size in GPT2_SIZES.items()}}


def load_base_model(name="smollm2", device="cpu"):
    """The pretrained model `name` (a key of BASE_MODELS), in eval mode on device, with its tokenizer
    and padding id: (model, tokenizer, pad_id, description)."""
    if name not in BASE_MODELS:
        raise ValueError(f"Unknown base model {name!r}: choose one of {', '.join(BASE_MODELS)}.")
    if name == "smollm2":
        model, tokenizer = load_smollm2(device)
        return model, tokenizer, tokenizer.pad_id, BASE_MODELS[name]
    model = load_pretrained_gpt2(name).to(device).eval()
    return model, tiktoken.get_encoding("gpt2"), END_OF_TEXT_ID, BASE_MODELS[name]


def random_base_model(name="smollm2", seed=123):
    """The architecture of load_base_model(name) with random weights (seeded), in eval mode."""
    if name not in BASE_MODELS:
        raise ValueError(f"Unknown base model {name!r}: choose one of {', '.join(BASE_MODELS)}.")
    torch.manual_seed(seed)
    model = LlamaModel(SMOLLM2_135M_CONFIG) if name == "smollm2" else GPTModel(gpt2_config(name))
    return model.eval()


# %% finetune/LLM-finetune-classification.ipynb, cell 24
class SpamDataset(Dataset):
    """SMS messages as token ids, truncated to max_length and right-padded with pad_token_id, with
    their number of real tokens and their labels (1 = spam, 0 = not spam). An item is
    ((token_ids, num_real), label)."""

    def __init__(self, texts, labels, tokenizer, max_length, pad_token_id):
        if len(texts) != len(labels):
            raise ValueError(f"Got {len(texts)} texts but {len(labels)} labels: one label per text.")
        self.labels = list(labels)
        self.max_length = max_length
        self.encoded_texts, self.num_real = [], []
        for i, text in enumerate(texts):
            if not text.strip():
                raise ValueError(f"Message {i} ({text!r}) has no text: remove empty messages first.")
            token_ids = tokenizer.encode(text)[:max_length]  # keep the beginning of a long message
            self.num_real.append(len(token_ids))
            self.encoded_texts.append(token_ids + [pad_token_id] * (max_length - len(token_ids)))
        self.num_truncated = sum(len(tokenizer.encode(text)) > max_length for text in texts)

    def __getitem__(self, index):
        token_ids = torch.tensor(self.encoded_texts[index])
        return (token_ids, torch.tensor(self.num_real[index])), torch.tensor(self.labels[index])

    def __len__(self):
        return len(self.encoded_texts)


# %% finetune/LLM-finetune-classification.ipynb, cell 29
def make_classifier(model, num_classes=2, trainable_blocks=1):
    """Turn a model with chapter 3's layer names into a classifier, in place: a new num_classes-way
    output head (on the model's device), and only the top `trainable_blocks` transformer blocks,
    the final norm and the head trainable."""
    num_blocks = len(model.trf_blocks)
    if not 0 <= trainable_blocks <= num_blocks:
        raise ValueError(f"trainable_blocks={trainable_blocks}, but the model has {num_blocks} blocks.")
    model.requires_grad_(False)  # freeze everything ...
    old_head = model.out_head.weight
    model.out_head = nn.Linear(old_head.shape[1], num_classes, device=old_head.device,
                               dtype=old_head.dtype)  # ... add a new head ...
    for module in [*model.trf_blocks[num_blocks - trainable_blocks:], model.final_norm, model.out_head]:
        module.requires_grad_(True)  # ... and unfreeze the top of the model
    return model


# %% finetune/LLM-finetune-classification.ipynb, cell 35
def last_real_token_logits(model, inputs, num_real):
    """The model's outputs at each row's last real token, (batch, num_classes). inputs: right-padded
    rows, (batch, num_tokens), or what frozen layers made of them, (batch, num_tokens, emb_dim);
    num_real: each row's number of real tokens, (batch,)."""
    if (num_real < 1).any():
        raise ValueError("A row holds only padding: every message needs at least one real token.")
    logits = model(inputs[:, :num_real.max()])  # (batch, longest message, num_classes)
    rows = torch.arange(len(num_real), device=logits.device)
    return logits[rows, num_real.to(logits.device) - 1]


# %% finetune/LLM-finetune-classification.ipynb, cell 38
def calc_loss_batch_classifier(input_batch, target_batch, model, device):
    """Cross-entropy of the classes read at the last real token; input_batch is (inputs, num_real)."""
    inputs, num_real = input_batch
    logits = last_real_token_logits(model, inputs.to(device), num_real.to(device))  # (batch, classes)
    return nn.functional.cross_entropy(logits, target_batch.to(device))


def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Share of correct predictions over the first num_batches batches (all of them when None)."""
    num_batches = len(data_loader) if num_batches is None else min(num_batches, len(data_loader))
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for i, ((inputs, num_real), targets) in enumerate(data_loader):
            if i == num_batches:
                break
            predictions = last_real_token_logits(model, inputs.to(device), num_real.to(device)).argmax(dim=-1)
            correct += (predictions == targets.to(device)).sum().item()
            seen += len(targets)
    model.train(was_training)  # back to the mode the model was in
    return correct / seen


# %% finetune/LLM-finetune-classification.ipynb, cell 40
class _StopForward(Exception):
    """Raised by hidden_states_before's hook to end a forward pass early."""


def hidden_states_before(model, block_index, input_ids):
    """The input of model.trf_blocks[block_index] (of model.final_norm when block_index is the number
    of blocks) for input_ids: what the layers below compute, (batch, num_tokens, emb_dim)."""
    blocks = model.trf_blocks
    layer = blocks[block_index] if block_index < len(blocks) else model.final_norm
    captured = []

    def grab_and_stop(module, args):
        captured.append(args[0])
        raise _StopForward  # the layers above are not needed

    handle = layer.register_forward_pre_hook(grab_and_stop)
    try:
        model(input_ids)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


class TopLayers(nn.Module):
    """model's layers from trf_blocks[first_block] up (those blocks, final_norm, out_head) as a model
    that takes hidden states, what the layers below computed. It shares model's modules."""

    def __init__(self, model, first_block):
        super().__init__()
        self.trf_blocks = model.trf_blocks[first_block:]
        self.final_norm, self.out_head = model.final_norm, model.out_head
        self.whole = [model]  # in a list, so not a submodule: its other weights are not this model's

    def forward(self, hidden):
        """model's own forward pass with only these layers, hidden fed in as the first one's input."""
        model = self.whole[0]
        first = self.trf_blocks[0] if len(self.trf_blocks) else self.final_norm
        saved = model.trf_blocks, model.final_norm, model.out_head
        model.trf_blocks, model.final_norm, model.out_head = self.trf_blocks, self.final_norm, self.out_head
        handle = first.register_forward_pre_hook(lambda module, args: (hidden, *args[1:]))
        try:  # any token ids of the right shape: what the embedding makes of them is replaced by hidden
            return model(torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device))
        finally:
            handle.remove()
            model.trf_blocks, model.final_norm, model.out_head = saved


# %% finetune/LLM-finetune-classification.ipynb, cell 42
class TrunkOutputs(Dataset):
    """A SpamDataset with every message's token ids replaced by what model's frozen layers (those
    below trf_blocks[first_block]) compute from them, computed once: items ((hidden, num_real), label),
    hidden of shape (max_length, emb_dim), zero after the message. bf16: chapter 4b's switch
    (False, True or "auto": in bfloat16 where the device computes it natively)."""

    def __init__(self, model, dataset, first_block, device, batch_size=32, bf16="auto", desc="frozen layers"):
        token_ids = torch.tensor(dataset.encoded_texts)
        self.num_real, self.labels = torch.tensor(dataset.num_real), torch.tensor(dataset.labels)
        self.hidden = None
        was_training = model.training
        model.eval()
        order = self.num_real.argsort()  # similar lengths together: little padding to compute
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                             enabled=use_bf16(bf16, device)):
            for rows in tqdm(order.split(batch_size), desc=desc):
                longest = self.num_real[rows].max()
                hidden = hidden_states_before(model, first_block, token_ids[rows, :longest].to(device))
                if self.hidden is None:
                    self.hidden = torch.zeros(len(token_ids), token_ids.shape[1], hidden.shape[-1])
                for row, n, states in zip(rows, self.num_real[rows], hidden.float().cpu()):
                    self.hidden[row, :n] = states[:n]
        model.train(was_training)

    def __getitem__(self, index):
        return (self.hidden[index], self.num_real[index]), self.labels[index]

    def __len__(self):
        return len(self.labels)


# %% finetune/LLM-finetune-classification.ipynb, cell 49
class SimilarLengthBatches(Sampler):
    """A DataLoader's batch_sampler: batches of batch_size indices whose lengths are similar, drawn
    anew each epoch (shuffle, sort each window of `window` batches by length, cut it into batches,
    dropping a window's incomplete last one, shuffle the batches). lengths: one per item."""

    def __init__(self, lengths, batch_size, window=16, seed=123):
        if batch_size < 1 or len(lengths) < batch_size:
            raise ValueError(f"Need batch_size >= 1 and at least batch_size items (got batch_size={batch_size} "
                             f"and {len(lengths)} items).")
        self.lengths, self.batch_size, self.window = torch.as_tensor(lengths), batch_size, window
        self.generator = torch.Generator().manual_seed(seed)  # the batches are the same in every run

    def __iter__(self):
        batches = []
        for chunk in torch.randperm(len(self.lengths), generator=self.generator).split(self.batch_size * self.window):
            chunk = chunk[self.lengths[chunk].argsort(stable=True)]  # similar lengths side by side
            batches += [batch.tolist() for batch in chunk.split(self.batch_size) if len(batch) == self.batch_size]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]

    def __len__(self):
        return len(self.lengths) // self.batch_size


# %% finetune/LLM-finetune-classification.ipynb, cell 74
def classify(text, model, tokenizer, device, max_length=None):
    """'spam' or 'not spam' for one message, read at its last token. Messages longer than
    max_length (default: the model's context length) are truncated to their first tokens."""
    context_length = model.context_length
    max_length = context_length if max_length is None else max_length
    if not 1 <= max_length <= context_length:
        raise ValueError(f"max_length={max_length} does not fit the model's context of "
                         f"{context_length} tokens: use 1 <= max_length <= {context_length}.")
    if not text.strip():
        raise ValueError(f"The message {text!r} has no text: give classify a non-empty message.")
    token_ids = torch.tensor([tokenizer.encode(text)[:max_length]], device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = last_real_token_logits(model, token_ids, torch.tensor([token_ids.shape[1]]))
    model.train(was_training)
    return "spam" if logits.argmax(dim=-1).item() == 1 else "not spam"
