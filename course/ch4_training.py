# Generated from training/LLM-training.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% training/LLM-training.ipynb, cell 4
import math
import os
import re

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
def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    encoded = tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    return torch.tensor(encoded).unsqueeze(0)  # add the batch dimension: (1, num_tokens)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    return tokenizer.decode(token_ids.squeeze(0).tolist())  # drop the batch dimension


# %% training/LLM-training.ipynb, cell 32
def calc_loss_batch(input_batch: torch.Tensor, target_batch: torch.Tensor, model: torch.nn.Module,
                    device: torch.device | str) -> torch.Tensor:
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, num_tokens, vocab_size)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


# %% training/LLM-training.ipynb, cell 33
def calc_loss_loader(data_loader, model: torch.nn.Module, device: torch.device | str,
                     num_batches: int | None = None, calc_loss=calc_loss_batch) -> float:
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
DEVICE_ENV = "LLM_DEVICE"  # set it to cpu, cuda, cuda:1 or mps to override the automatic choice
MPS_MIN_TORCH = (2, 9)  # older PyTorch trains wrongly on MPS (rasbt/LLMs-from-scratch #635, #791)


def _torch_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def _choose_device(name: str | None) -> tuple[torch.device, str]:
    """(device, why): the one named (argument, then $LLM_DEVICE), else CUDA, MPS, CPU."""
    how = "asked for by name"
    if name is None and os.environ.get(DEVICE_ENV):
        name, how = os.environ[DEVICE_ENV], f"set by ${DEVICE_ENV}"
    if name is not None:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"{name!r} is not a device name; use cpu, cuda, cuda:N or mps.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{name!r}: this PyTorch sees no CUDA GPU here; use cpu (or mps on a Mac).")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"{name!r}: Apple's MPS is not available here; use cpu.")
        return device, how
    if torch.cuda.is_available():
        return torch.device("cuda"), "an NVIDIA GPU (CUDA) is available"
    if torch.backends.mps.is_available():
        version = ".".join(map(str, _torch_version()))
        if _torch_version() >= MPS_MIN_TORCH:
            return torch.device("mps"), f"Apple silicon's GPU (MPS), with PyTorch {version}"
        return torch.device("cpu"), (f"Apple's MPS is here, but PyTorch {version} trains wrongly on it; "
                                     f"PyTorch 2.9 or newer uses it")
    return torch.device("cpu"), "no CUDA GPU and no Apple MPS here"


def get_device(name: str | None = None, verbose: bool = False) -> torch.device:
    """The device to train on: `name` if given (cpu, cuda, cuda:1, mps), else $LLM_DEVICE if set,
    else CUDA, then Apple silicon's MPS (PyTorch 2.9 or newer only), then the CPU.
    verbose=True prints the choice and why."""
    device, why = _choose_device(name)
    if verbose:
        print(f"Using {device}: {why}")
    return device


# %% training/LLM-training.ipynb, cell 43
def evaluate_model(model: torch.nn.Module, train_loader, val_loader, device: torch.device | str,
                   eval_iter: int, calc_loss=calc_loss_batch) -> tuple[float, float]:
    """Mean training and validation loss (calc_loss of each batch) over eval_iter batches each,
    with dropout off."""
    was_training = model.training
    model.eval()  # dropout off: the loss measures the model, not a random sub-network
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, eval_iter, calc_loss)
        val_loss = calc_loss_loader(val_loader, model, device, eval_iter, calc_loss)
    model.train(was_training)  # back to the mode the model was in
    return train_loss, val_loss


# %% training/LLM-training.ipynb, cell 45
def generate_and_print_sample(model: torch.nn.Module, tokenizer, device: torch.device | str,
                              start_context: str, max_new_tokens: int = 50) -> None:
    """Print a greedy continuation of start_context on one line (a progress check, not a demo)."""
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    token_ids = generate_text_simple(model, encoded, max_new_tokens=max_new_tokens,
                                     context_size=model.context_length)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train(was_training)


# %% training/LLM-training.ipynb, cell 47
def train_model_simple(model: torch.nn.Module, train_loader, val_loader, optimizer: torch.optim.Optimizer,
                       device: torch.device | str, num_epochs: int, eval_freq: int, eval_iter: int,
                       start_context: str | None = None, tokenizer=None, calc_loss=calc_loss_batch,
                       warmup_steps: int = 0, min_lr: float | None = None, max_grad_norm: float | None = None,
                       history: dict | None = None) -> tuple[list[float], list[float], list[int]]:
    """Train for num_epochs; every eval_freq steps print the train and validation losses,
    after each epoch print a sample of start_context (none when it is None). Returns the losses
    and the tokens seen at each evaluation. calc_loss(input_batch, target_batch, model, device) is
    the loss each step minimizes and each evaluation reports.

    Off by default (section 7): warmup_steps > 0 raises the learning rate linearly from near 0
    to the optimizer's lr; min_lr (a number) then decays it along a cosine to min_lr at the last
    step; max_grad_norm clips the gradients' total norm. history (a dict) gets the lists "loss",
    "lr" and "grad_norm" (before clipping), one entry per step."""
    if len(train_loader) == 0:
        raise ValueError(
            "The training loader has no batches, so there is nothing to train on. Its text is too "
            "short for one batch: use a smaller batch_size or max_length, or drop_last=False."
        )
    if eval_freq < 1:
        raise ValueError(f"eval_freq must be at least 1 step (got {eval_freq}).")
    if warmup_steps < 0 or (max_grad_norm is not None and max_grad_norm <= 0):
        raise ValueError(f"warmup_steps must be >= 0 and max_grad_norm > 0 or None "
                         f"(got {warmup_steps} and {max_grad_norm}).")
    peak_lrs = [group["lr"] for group in optimizer.param_groups]  # the lr each group was given
    total_steps = num_epochs * len(train_loader)
    scheduled = warmup_steps > 0 or min_lr is not None
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    model.train()  # dropout on
    for epoch in range(num_epochs):
        for input_batch, target_batch in train_loader:
            global_step += 1
            if scheduled:  # section 7: warmup, then cosine decay
                for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
                    group["lr"] = lr_at_step(global_step, total_steps, peak_lr, warmup_steps, min_lr)
            optimizer.zero_grad()  # gradients accumulate by default: reset them every step
            loss = calc_loss(input_batch, target_batch, model, device)
            loss.backward()  # d loss / d every parameter
            if max_grad_norm is not None or history is not None:  # section 7: clip (no limit: only measure)
                limit = math.inf if max_grad_norm is None else max_grad_norm
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)  # the norm before clipping
            optimizer.step()  # move every parameter a little against its gradient
            tokens_seen += target_batch.numel()  # one target per input token
            if history is not None:
                for key, value in (("loss", loss.item()), ("lr", optimizer.param_groups[0]["lr"]),
                                   ("grad_norm", grad_norm.item())):
                    history.setdefault(key, []).append(value)
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter,
                                                      calc_loss)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (step {global_step:06d}): "
                      f"train loss {train_loss:.3f}, val loss {val_loss:.3f}")
        if start_context is not None:
            generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


# %% training/LLM-training.ipynb, cell 67
def lr_at_step(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0,
               min_lr: float | None = None) -> float:
    """The learning rate at step (0-based) of total_steps: linear warmup to peak_lr over
    warmup_steps, then a cosine decay to min_lr at the last step (constant when min_lr is None)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if min_lr is None:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))  # 0 -> 1
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))


# %% training/LLM-training.ipynb, cell 72
def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups as nanoGPT builds them: weight_decay on every trainable parameter
    with 2 or more dimensions (linear layers' weights, embeddings), none on the vectors (biases,
    LayerNorm scales and shifts). Pass the result to the optimizer instead of model.parameters()."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


# %% training/LLM-training.ipynb, cell 90
def generate(model: torch.nn.Module, idx: torch.Tensor, max_new_tokens: int, context_size: int,
             temperature: float | None = 0.0, top_k: int | None = None, eos_id: int | None = None) -> torch.Tensor:
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
