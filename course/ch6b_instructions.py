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
from tqdm import tqdm

from course.ch4b_performance import use_bf16  # chapter 4b: bfloat16 where it is native
from course.ch5b_modern import chat_prompt, generate_batch  # chapter 5b: its chat format; left-padded rows, with the KV cache
from course.ch6a_classification import hidden_states_before  # 6a: what the frozen lower layers compute


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


# %% finetune/LLM-finetune-instructions.ipynb, cell 12
def format_chatml(entry):
    """The entry as one user turn of ChatML (chapter 5b's chat_prompt, with SmolLM2's default system
    turn), ending where the assistant's answer begins."""
    content = "\n\n".join(part for part in (entry["instruction"], entry["input"]) if part)
    return chat_prompt([{"role": "user", "content": content}])


PROMPT_FORMATS = {  # name: (entry -> prompt text, the special tokens that prompt is made of)
    "alpaca": (format_input, frozenset()),
    "chatml": (format_chatml, frozenset({"<|im_start|>", "<|im_end|>"})),
}


def encode_prompt(entry, tokenizer, prompt_format="alpaca"):
    """The token ids of entry's prompt in one of PROMPT_FORMATS: the format's own special tokens are
    allowed, any other special token in the text is refused (by the tokenizer)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"Unknown prompt format {prompt_format!r}: use one of {sorted(PROMPT_FORMATS)}.")
    format_prompt, special_tokens = PROMPT_FORMATS[prompt_format]
    return tokenizer.encode(format_prompt(entry), allowed_special=special_tokens)


# %% finetune/LLM-finetune-instructions.ipynb, cell 18
BASE_PROMPT_FORMATS = {"smollm2": "chatml",  # the format its makers tuned it in
                       "gpt2-medium": "alpaca"}  # tuned in none: the book's format


# %% finetune/LLM-finetune-instructions.ipynb, cell 22
class InstructionDataset(Dataset):
    """Each entry as (token ids of prompt + response, number of prompt tokens)."""

    def __init__(self, data, tokenizer, prompt_format="alpaca"):
        self.items = []
        for i, entry in enumerate(data):
            missing = [key for key in ("instruction", "input", "output") if key not in entry]
            if missing:
                raise ValueError(f"Entry {i} lacks the key(s) {missing}; each entry needs "
                                 f"'instruction', 'input' (may be empty) and 'output'.")
            prompt_ids = encode_prompt(entry, tokenizer, prompt_format)
            response_ids = tokenizer.encode(entry["output"])
            self.items.append((prompt_ids + response_ids, len(prompt_ids)))

    def __getitem__(self, index):
        return self.items[index]

    def __len__(self):
        return len(self.items)


# %% finetune/LLM-finetune-instructions.ipynb, cell 28
def instruction_collate_fn(batch, pad_token_id, ignore_index=-100, allowed_max_length=None, mask_prompt=True):
    """Pad a batch of (token_ids, prompt_length) to one length and shift it into (inputs, targets).

    Every sequence gets at least one padding token; that first one stays in the targets (it ends the
    response: the model must learn to stop), the rest of the padding becomes ignore_index, and so
    does the prompt when mask_prompt is True: cross_entropy skips ignore_index targets.
    """
    if not batch:
        raise ValueError("The batch is empty.")
    batch_max_length = max(len(token_ids) + 1 for token_ids, _ in batch)
    inputs_lst, targets_lst = [], []
    for i, (token_ids, prompt_length) in enumerate(batch):
        padded = token_ids + [pad_token_id] * (batch_max_length - len(token_ids))
        inputs = torch.tensor(padded[:-1])   # (batch_max_length - 1,)
        targets = torch.tensor(padded[1:])   # the next token at every position
        targets[len(token_ids):] = ignore_index  # all padding but the first
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


# %% finetune/LLM-finetune-instructions.ipynb, cell 34
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


# %% finetune/LLM-finetune-instructions.ipynb, cell 36
ARTICLES = {"a", "an", "the"}  # dropped before words are compared, as SQuAD's evaluation does


def answer_words(text):
    """The words of a text as answers are compared: lower case, punctuation and the articles a, an,
    the dropped. "The author is Jane Austen." -> ['author', 'is', 'jane', 'austen']."""
    return [word for word in re.findall(r"\w+", text.lower()) if word not in ARTICLES]


def prompt_words(entry):
    """The words the prompt gives away: those of the instruction, then those of the input."""
    return answer_words(entry["instruction"]) + answer_words(entry["input"])


# %% finetune/LLM-finetune-instructions.ipynb, cell 37
def word_f1(response_words, reference_words):
    """SQuAD's F1 of two lists of words, as bags of words: the harmonic mean of precision (the share
    of the response's words that the reference has) and recall (the share of the reference's words
    that the response has)."""
    shared = sum((Counter(response_words) & Counter(reference_words)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(response_words), shared / len(reference_words)
    return 2 * precision * recall / (precision + recall)


def answer_f1(response, entry):
    """Word F1 of response and reference, counting only words the prompt does not contain, so that
    repeating the prompt earns nothing; plain word F1 where every word of the reference is in the
    prompt (a label the prompt offers, a list to sort)."""
    given = set(prompt_words(entry))
    reference = answer_words(entry["output"])
    new_in_reference = [word for word in reference if word not in given]
    if not new_in_reference:
        return word_f1(answer_words(response), reference)
    return word_f1([word for word in answer_words(response) if word not in given], new_in_reference)


# %% finetune/LLM-finetune-instructions.ipynb, cell 38
def uncopied_words(response, entry, run=3):
    """The response's words, less those in a run of `run` or more words copied from the prompt."""
    words, given = answer_words(response), prompt_words(entry)
    copied_runs = {tuple(given[i:i + run]) for i in range(len(given) - run + 1)}
    copied = [False] * len(words)
    for i in range(len(words) - run + 1):
        if tuple(words[i:i + run]) in copied_runs:
            copied[i:i + run] = [True] * run
    return [word for word, was_copied in zip(words, copied) if not was_copied]


def has_key_answer(response, entry):
    """Do the reference's words appear in the response, in order and next to each other, outside
    any stretch of words copied from the prompt?"""
    answer, words = answer_words(entry["output"]), uncopied_words(response, entry)
    if not answer:
        raise ValueError(f"The reference {entry['output']!r} has no words to look for.")
    return any(words[i:i + len(answer)] == answer for i in range(len(words) - len(answer) + 1))


def score_responses(entries, responses, max_answer_words=3):
    """The judge-free score of one response per entry: the mean answer F1 over all entries; the key
    answers found among the short-answer entries (references of at most max_answer_words words);
    and, to compare with, the mean plain word F1."""
    if len(entries) != len(responses) or not entries:
        raise ValueError(f"Got {len(entries)} entries and {len(responses)} responses: one response per entry.")
    pairs = list(zip(entries, responses))
    short = [(entry, response) for entry, response in pairs
             if len(answer_words(entry["output"])) <= max_answer_words]
    return {
        "answer_f1": sum(answer_f1(response, entry) for entry, response in pairs) / len(pairs),
        "key_answers": sum(has_key_answer(response, entry) for entry, response in short),
        "short_items": len(short),
        "word_f1": sum(word_f1(answer_words(response), answer_words(entry["output"]))
                       for entry, response in pairs) / len(pairs),
    }


# %% finetune/LLM-finetune-instructions.ipynb, cell 43
def nearest_training_answer(entry, train_data):
    """The output of the training entry whose prompt shares the most words with entry's prompt (by
    word F1): what a model that memorised the training set and looked answers up would say."""
    words = prompt_words(entry)
    return max(train_data, key=lambda other: word_f1(prompt_words(other), words))["output"]


# %% finetune/LLM-finetune-instructions.ipynb, cell 47
def generate_responses(model, tokenizer, prompts, end_id, max_new_tokens=48, batch_size=32, desc="answers"):
    """The model's greedy continuation of each prompt (a list of token ids), up to end_id, as text:
    prompts of similar lengths in one batch, left-padded, with the KV cache (5b's generate_batch)."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together
    responses = [None] * len(prompts)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc):
        rows = order[start:start + batch_size]
        new_ids = generate_batch(model, [prompts[i] for i in rows], max_new_tokens, eos_id=end_id, pad_id=end_id)
        for i, ids in zip(rows, new_ids):
            responses[i] = tokenizer.decode(ids).strip()
    model.train(was_training)
    return responses


# %% finetune/LLM-finetune-instructions.ipynb, cell 52
RECIPES = {  # how 6b finetunes each base model
    "smollm2": {"trainable_blocks": 2, "train_examples": 400, "num_epochs": 2, "lr": 3e-4,
                "weight_decay": 0.1, "batch_size": 8},  # what a laptop CPU can afford
    "gpt2-medium": {"trainable_blocks": 24, "train_examples": 935, "num_epochs": 2, "lr": 5e-5,
                    "weight_decay": 0.1, "batch_size": 8},  # Raschka's chapter 7 (all blocks; a GPU)
}


def trunk_outputs(model, loader, first_block, device, bf16="auto", desc="frozen layers"):
    """Each batch (inputs, targets) of loader as (hidden, targets): hidden is what the model's layers
    below trf_blocks[first_block] compute from inputs (6a's hidden_states_before), computed once, in
    bfloat16 where the device computes it natively (chapter 4b's switch, as 6a's TrunkOutputs), kept
    in float32."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                         enabled=use_bf16(bf16, device)):
        batches = [(hidden_states_before(model, first_block, inputs.to(device)).float(), targets)
                   for inputs, targets in tqdm(loader, desc=desc)]
    model.train(was_training)
    return batches


# %% finetune/LLM-finetune-instructions.ipynb, cell 57
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


# %% finetune/LLM-finetune-instructions.ipynb, cell 72
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
