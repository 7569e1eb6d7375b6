# Generated from training/LLM-training.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% training/LLM-training.ipynb, cell 4
import math

import torch

from course.ch3_architecture import generate_text_simple  # chapter 3


# %% training/LLM-training.ipynb, cell 6
GPT_SMALL_CONFIG = {
    "vocab_size": 50257,    # GPT-2's BPE vocabulary, so GPT-2's tokenizer still works
    "context_length": 128,  # shorter windows: the-verdict has only about 5,000 tokens
    "emb_dim": 128,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
    "qkv_bias": False,
}


# %% training/LLM-training.ipynb, cell 10
def text_to_token_ids(text, tokenizer):
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension: (1, num_tokens)


def token_ids_to_text(token_ids, tokenizer):
    return tokenizer.decode(token_ids.squeeze(0).tolist())  # drop the batch dimension


# %% training/LLM-training.ipynb, cell 32
def calc_loss_batch(input_batch, target_batch, model, device):
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, num_tokens, vocab_size)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


# %% training/LLM-training.ipynb, cell 33
def calc_loss_loader(data_loader, model, device, num_batches=None, calc_loss=calc_loss_batch):
    """Mean loss (calc_loss of each batch) over the first num_batches batches (all when None)."""
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
        total_loss += calc_loss(input_batch, target_batch, model, device).item()
    return total_loss / num_batches


# %% training/LLM-training.ipynb, cell 35
def get_device():
    """The fastest device here: CUDA, then Apple silicon (MPS), then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# %% training/LLM-training.ipynb, cell 42
def evaluate_model(model, train_loader, val_loader, device, eval_iter, calc_loss=calc_loss_batch):
    """Mean training and validation loss (calc_loss of each batch) over eval_iter batches each,
    with dropout off."""
    was_training = model.training
    model.eval()  # dropout off: the loss measures the model, not a random sub-network
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, eval_iter, calc_loss)
        val_loss = calc_loss_loader(val_loader, model, device, eval_iter, calc_loss)
    model.train(was_training)  # back to the mode the model was in
    return train_loss, val_loss


# %% training/LLM-training.ipynb, cell 44
def generate_and_print_sample(model, tokenizer, device, start_context, max_new_tokens=50):
    """Print a greedy continuation of start_context on one line (a progress check, not a demo)."""
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens=max_new_tokens,
                                     context_size=model.context_length)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train(was_training)


# %% training/LLM-training.ipynb, cell 46
def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                       eval_freq, eval_iter, start_context, tokenizer, calc_loss=calc_loss_batch):
    """Train for num_epochs; every eval_freq steps print the train and validation losses,
    after each epoch print a sample. Returns the losses and the tokens seen at each evaluation.
    calc_loss(input_batch, target_batch, model, device) is the loss each step minimizes and
    each evaluation reports."""
    if len(train_loader) == 0:
        raise ValueError(
            "The training loader has no batches, so there is nothing to train on. Its text is too "
            "short for one batch: use a smaller batch_size or max_length, or drop_last=False."
        )
    if eval_freq < 1:
        raise ValueError(f"eval_freq must be at least 1 step (got {eval_freq}).")
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    model.train()  # dropout on
    for epoch in range(num_epochs):
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()  # gradients accumulate by default: reset them every step
            loss = calc_loss(input_batch, target_batch, model, device)
            loss.backward()  # d loss / d every parameter
            optimizer.step()  # move every parameter a little against its gradient
            tokens_seen += input_batch.numel()
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter,
                                                      calc_loss)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


# %% training/LLM-training.ipynb, cell 72
def generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """Append up to max_new_tokens tokens to idx (batch, num_tokens): greedy when temperature
    is 0 or None, else sampled from softmax(logits / temperature), optionally only among the
    top_k most likely tokens. A row that has produced eos_id is padded with eos_id from then on;
    generation stops once every row has produced it."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0 (got {max_new_tokens!r}).")
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (got {temperature}); use 0 for greedy decoding.")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1 (got {top_k}), or None to keep every token.")
    if context_size < 1:
        raise ValueError(f"context_size must be at least 1 (got {context_size}); use the model's context_length.")
    finished = torch.zeros(idx.shape[0], 1, dtype=torch.bool, device=idx.device)  # rows past eos_id
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]  # crop to the context the model supports
        if top_k is not None:
            top_logits, _ = torch.topk(logits, min(top_k, logits.shape[-1]))
            logits = logits.masked_fill(logits < top_logits[:, -1:], -torch.inf)
        if temperature:
            probs = torch.softmax(logits / temperature, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (batch, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch, 1)
        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished, eos_id)  # a finished row stays finished
            finished |= idx_next == eos_id
        idx = torch.cat((idx, idx_next), dim=1)
        if eos_id is not None and finished.all():
            break
    return idx
