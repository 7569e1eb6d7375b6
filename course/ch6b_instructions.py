# Generated from finetune/LLM-finetune-instructions.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-instructions.ipynb, cell 4
import json
import re
import urllib.request
from collections import Counter

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from course.ch1_data import END_OF_TEXT_ID  # chapter 1
from course.ch4b_performance import generate  # chapter 4's generate(), with chapter 4b's KV cache


# %% finetune/LLM-finetune-instructions.ipynb, cell 9
def format_input(entry):
    """The Alpaca prompt for one entry, ending where the model's response begins."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
    return instruction_text + input_text + "\n\n### Response:\n"


# %% finetune/LLM-finetune-instructions.ipynb, cell 14
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


# %% finetune/LLM-finetune-instructions.ipynb, cell 20
def instruction_collate_fn(batch, pad_token_id=END_OF_TEXT_ID, ignore_index=-100,
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


# %% finetune/LLM-finetune-instructions.ipynb, cell 26
def logits_at_targets(model, inputs, targets, ignore_index=-100):
    """The scores at the positions whose target is kept, (num_kept, vocab_size), and those targets,
    (num_kept,): the output head runs on these positions only."""
    head = model.out_head
    model.out_head = nn.Identity()  # for this call, model(inputs) returns the final norm's output
    try:
        hidden = model(inputs)  # (batch, num_tokens, emb_dim)
    finally:
        model.out_head = head  # always put the head back, even if the forward pass fails
    keep = targets != ignore_index  # (batch, num_tokens)
    return head(hidden[keep]), targets[keep]


def calc_loss_batch_at_targets(input_batch, target_batch, model, device):
    """Chapter 4's calc_loss_batch for targets masked with -100: the same loss, without computing
    the scores that cross_entropy would skip."""
    logits, targets = logits_at_targets(model, input_batch.to(device), target_batch.to(device))
    return torch.nn.functional.cross_entropy(logits, targets)


# %% finetune/LLM-finetune-instructions.ipynb, cell 33
def calc_response_loss(data_loader, model, device):
    """Mean cross-entropy per kept target token (sum over all of them, then divide by their number)."""
    was_training = model.training
    model.eval()
    total_loss, num_targets = 0.0, 0
    with torch.no_grad():
        for inputs, targets in data_loader:
            logits, kept = logits_at_targets(model, inputs.to(device), targets.to(device))
            total_loss += torch.nn.functional.cross_entropy(logits, kept, reduction="sum").item()
            num_targets += len(kept)
    model.train(was_training)
    return total_loss / num_targets


# %% finetune/LLM-finetune-instructions.ipynb, cell 36
def generate_response(entry, model, tokenizer, device, max_new_tokens=30):
    """The model's greedy response to one entry, without the prompt and the end-of-text."""
    prompt_ids = torch.tensor([tokenizer.encode(format_input(entry))], device=device)
    token_ids = generate(model, prompt_ids, max_new_tokens=max_new_tokens,
                         context_size=model.context_length, eos_id=END_OF_TEXT_ID)
    response_ids = token_ids[0, prompt_ids.shape[1]:].tolist()
    if response_ids and response_ids[-1] == END_OF_TEXT_ID:
        response_ids = response_ids[:-1]  # the end-of-text is a stop signal, not text
    return tokenizer.decode(response_ids).strip()


# %% finetune/LLM-finetune-instructions.ipynb, cell 38
def answer_words(text):
    """The words of a text, lower-cased, punctuation dropped: "Jane Austen." -> ['jane', 'austen']."""
    return re.findall(r"\w+", text.lower())


def contains_answer(response, reference):
    """Do the reference's words appear in the response, in order and next to each other?"""
    answer, words = answer_words(reference), answer_words(response)
    if not answer:
        raise ValueError(f"The reference {reference!r} has no words to look for.")
    return any(words[i:i + len(answer)] == answer for i in range(len(words) - len(answer) + 1))


def word_f1(response, reference):
    """The F1 of SQuAD: the words response and reference share (as bags of words), as the harmonic
    mean of precision (share of the response's words) and recall (share of the reference's)."""
    response_words, reference_words = Counter(answer_words(response)), Counter(answer_words(reference))
    shared = sum((response_words & reference_words).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / sum(response_words.values()), shared / sum(reference_words.values())
    return 2 * precision * recall / (precision + recall)


def score_responses(entries, responses, max_answer_words=3):
    """A score that needs no judge: on the short-answer items (references of at most
    max_answer_words words), how many responses contain the reference; on all items, the mean
    word F1 of response and reference."""
    if len(entries) != len(responses) or not entries:
        raise ValueError(f"Got {len(entries)} entries and {len(responses)} responses: one response per entry.")
    short = [(entry, response) for entry, response in zip(entries, responses)
             if len(answer_words(entry["output"])) <= max_answer_words]
    return {
        "short_answer_hits": sum(contains_answer(response, entry["output"]) for entry, response in short),
        "short_answer_items": len(short),
        "mean_word_f1": sum(word_f1(r, e["output"]) for e, r in zip(entries, responses)) / len(entries),
    }


# %% finetune/LLM-finetune-instructions.ipynb, cell 64
OLLAMA_URL = "http://127.0.0.1:11434"  # where a local Ollama server listens


def ollama_is_running(url=OLLAMA_URL, timeout=1.0):
    """True when an Ollama server answers at url (within timeout seconds)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def query_ollama(prompt, model="llama3", url=OLLAMA_URL, timeout=120):
    """The reply of Ollama's `model` to one prompt, deterministic (seed 123, temperature 0)."""
    data = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}}
    request = urllib.request.Request(f"{url}/api/chat", data=json.dumps(data).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
    reply = ""
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:  # Ollama streams its reply as one JSON object per line
            if line.strip():
                reply += json.loads(line)["message"]["content"]
    return reply


def judge_scores(entries, responses, model="llama3", url=OLLAMA_URL):
    """Scores from 0 to 100 that Ollama's `model` gives each response, with the prompt of
    Raschka's chapter 7; a reply without a number is left out (and counted in the second value)."""
    scores, unreadable = [], 0
    for entry, response in zip(entries, responses):
        prompt = (f"Given the input `{format_input(entry)}` and correct output `{entry['output']}`, "
                  f"score the model response `{response}` on a scale from 0 to 100, where 100 is "
                  f"the best score. Respond with the integer number only.")
        number = re.search(r"\d+", query_ollama(prompt, model, url))
        if number is None:
            unreadable += 1
        else:
            scores.append(min(100, int(number.group())))
    return scores, unreadable
