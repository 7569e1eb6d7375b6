"""Stage 6: the finetuning building blocks, checked on tiny models and hand-written batches."""
import json

import pytest
import tiktoken
import torch
import torch.nn as nn

import course.ch6a_classification as ch6a  # where load_base_model looks GPT-2 up
import helpers
from helpers import (DataFileError, GPTModel, InstructionDataset, SpamDataset, base_model_path,
                     classify, format_input, instruction_collate_fn, last_real_token_logits,
                     load_base_model)

E = 50256  # GPT-2's <|endoftext|>, the padding id
I = -100   # cross_entropy's default ignore_index
TINY = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": False}


@pytest.fixture(scope="module")
def tokenizer():
    return tiktoken.get_encoding("gpt2")


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    model = GPTModel(TINY)
    model.out_head = nn.Linear(TINY["emb_dim"], 2)
    return model.eval()


# --- the instruction collate function ---------------------------------------------------------

BATCH = [([1, 2, 3, 4, 5], 2), ([6, 7], 1), ([8, 9, 10], 1)]  # (token ids, prompt length)


def test_collate_pads_shifts_and_masks_all_but_the_first_end_of_text():
    inputs, targets = instruction_collate_fn(BATCH, mask_prompt=False)
    assert torch.equal(inputs, torch.tensor([[1, 2, 3, 4, 5],
                                             [6, 7, E, E, E],
                                             [8, 9, 10, E, E]]))
    assert torch.equal(targets, torch.tensor([[2, 3, 4, 5, E],
                                              [7, E, I, I, I],
                                              [9, 10, E, I, I]]))


def test_collate_masks_the_prompt():
    _, targets = instruction_collate_fn(BATCH, mask_prompt=True)
    # row 0: prompt [1, 2]; predicting token 2 is the prompt's job, so only that target is masked
    assert torch.equal(targets, torch.tensor([[I, 3, 4, 5, E],
                                              [7, E, I, I, I],
                                              [9, 10, E, I, I]]))


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = instruction_collate_fn(BATCH, allowed_max_length=3, mask_prompt=False)
    assert torch.equal(inputs, torch.tensor([[1, 2, 3], [6, 7, E], [8, 9, 10]]))
    assert torch.equal(targets, torch.tensor([[2, 3, 4], [7, E, I], [9, 10, E]]))


def test_collate_keeps_an_end_of_text_inside_the_text():
    """Padding is found by length, not by value: a real 50256 in the text stays a target."""
    _, targets = instruction_collate_fn([([7, E, 8], 1), ([9], 1)], mask_prompt=False)
    assert torch.equal(targets, torch.tensor([[E, 8, E], [E, I, I]]))


def test_cross_entropy_ignores_the_masked_targets():
    inputs, targets = instruction_collate_fn(BATCH, mask_prompt=True)
    torch.manual_seed(0)
    logits = torch.randn(*inputs.shape, 50257)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    kept = [(b, t) for b in range(targets.shape[0]) for t in range(targets.shape[1]) if targets[b, t] != I]
    manual = sum(-torch.log_softmax(logits[b, t], dim=-1)[targets[b, t]] for b, t in kept) / len(kept)
    assert len(kept) == 9
    assert torch.isclose(loss, manual, atol=1e-5)


def test_collate_rejects_an_example_left_without_targets():
    with pytest.raises(ValueError, match="allowed_max_length"):
        instruction_collate_fn([([1, 2, 3, 4], 3)], allowed_max_length=2, mask_prompt=True)
    with pytest.raises(ValueError, match="empty"):
        instruction_collate_fn([])


# --- the instruction data ----------------------------------------------------------------------

def test_format_input_with_and_without_input():
    header = ("Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\n")
    assert format_input({"instruction": "Add.", "input": "2 + 2", "output": "4"}) == \
        header + "Add.\n\n### Input:\n2 + 2\n\n### Response:\n"
    assert format_input({"instruction": "Say hi.", "input": "", "output": "Hi"}) == \
        header + "Say hi.\n\n### Response:\n"


def test_instruction_dataset_records_the_prompt_length(tokenizer):
    entry = {"instruction": "Say hi.", "input": "", "output": "Hi there."}
    token_ids, prompt_length = InstructionDataset([entry], tokenizer)[0]
    assert token_ids[:prompt_length] == tokenizer.encode(format_input(entry))
    assert tokenizer.decode(token_ids[prompt_length:]) == "Hi there."
    with pytest.raises(ValueError, match="'output'"):
        InstructionDataset([{"instruction": "x", "input": ""}], tokenizer)


# --- the classifier ----------------------------------------------------------------------------

def test_last_real_token_ignores_any_amount_of_padding(tokenizer):
    model = tiny_classifier()
    ids = tokenizer.encode("Win a free prize now")
    with torch.no_grad():
        reference = model(torch.tensor([ids]))[0, -1]  # no padding at all
        for length in range(len(ids), TINY["context_length"] + 1):
            padded = torch.tensor([ids + [E] * (length - len(ids))])
            assert torch.allclose(last_real_token_logits(model, padded)[0], reference, atol=1e-5), length


def test_last_position_does_change_with_padding(tokenizer):
    """The bug the helper avoids: the output at the last position depends on the padding."""
    model = tiny_classifier()
    ids = tokenizer.encode("Win a free prize now")
    with torch.no_grad():
        short = model(torch.tensor([ids + [E] * 2]))[0, -1]
        long = model(torch.tensor([ids + [E] * 8]))[0, -1]
    assert not torch.allclose(short, long, atol=1e-5)


def test_last_real_token_per_row_of_a_mixed_batch(tokenizer):
    model = tiny_classifier(seed=1)
    texts = ["Hi", "Call me later, ok?", "URGENT! You have won a 1 week FREE membership"]
    encoded = [tokenizer.encode(t) for t in texts]
    batch = torch.tensor([ids + [E] * (TINY["context_length"] - len(ids)) for ids in encoded])
    with torch.no_grad():
        logits = last_real_token_logits(model, batch)
        for row, ids in enumerate(encoded):
            assert torch.allclose(logits[row], model(torch.tensor([ids]))[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="only padding"):
        last_real_token_logits(model, torch.full((1, 4), E))


def test_spam_dataset_truncates_and_pads(tokenizer):
    long_text = "free " * 30
    dataset = SpamDataset(["Hi there", long_text], [0, 1], tokenizer, max_length=6)
    short_ids = tokenizer.encode("Hi there")
    assert dataset[0][0].tolist() == short_ids + [E] * (6 - len(short_ids))
    assert dataset[1][0].tolist() == tokenizer.encode(long_text)[:6]
    assert dataset[1][1].item() == 1 and dataset.num_truncated == 1


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_message_is_a_clear_error(tokenizer, text):
    with pytest.raises(ValueError, match="no text"):
        SpamDataset(["fine", text], [0, 1], tokenizer, max_length=8)
    with pytest.raises(ValueError, match="no text"):
        classify(text, tiny_classifier(), tokenizer, "cpu")


def test_labels_must_match_texts(tokenizer):
    with pytest.raises(ValueError, match="one label per text"):
        SpamDataset(["a", "b"], [0], tokenizer, max_length=8)


def test_classify_truncates_a_message_longer_than_the_context(tokenizer):
    model = tiny_classifier(seed=2)
    text = "Congratulations, you have been selected for a cash prize, call now " * 5
    ids = tokenizer.encode(text)
    assert len(ids) > TINY["context_length"]
    with torch.no_grad():
        expected = model(torch.tensor([ids[:TINY["context_length"]]]))[0, -1].argmax().item()
    assert classify(text, model, tokenizer, "cpu") == ("spam" if expected == 1 else "not spam")
    with pytest.raises(ValueError, match="context"):
        classify(text, model, tokenizer, "cpu", max_length=TINY["context_length"] + 1)


# --- the base model and its cache ----------------------------------------------------------------

TINY_RECIPE = {"texts": ["the-verdict.txt"], "steps": 2, "batch_size": 2, "max_length": 16,
               "lr": 1e-3, "weight_decay": 0.1, "val_fraction": 0.1, "seed": 123}


def test_cache_name_follows_config_and_recipe(tmp_path):
    name = base_model_path(TINY, TINY_RECIPE, tmp_path)
    assert name.parent == tmp_path
    assert base_model_path(dict(reversed(list(TINY.items()))), TINY_RECIPE, tmp_path) == name  # key order
    assert base_model_path({**TINY, "n_layers": 3}, TINY_RECIPE, tmp_path) != name
    assert base_model_path({**TINY, "context_length": 32}, TINY_RECIPE, tmp_path) != name
    assert base_model_path(TINY, {**TINY_RECIPE, "steps": 3}, tmp_path) != name
    assert base_model_path(TINY, {**TINY_RECIPE, "texts": ["tinyshakespeare.txt"]}, tmp_path) != name


def no_gpt2(*args, **kwargs):
    raise DataFileError("GPT-2 weights not available (test)")


def test_self_pretrained_base_is_cached_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(ch6a, "load_pretrained_gpt2", no_gpt2)
    model, cfg, description = load_base_model(TINY, TINY_RECIPE, models_dir=tmp_path)
    assert cfg == TINY and "pretrained now" in description and not model.training
    assert [p.name for p in tmp_path.iterdir()] == [base_model_path(TINY, TINY_RECIPE, tmp_path).name]
    again, _, description = load_base_model(TINY, TINY_RECIPE, models_dir=tmp_path)
    assert "loaded from the cache" in description
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(TINY_RECIPE["seed"])  # the weights pretraining started from
    fresh = GPTModel(TINY)  # pretraining really changed the weights
    assert not torch.equal(fresh.out_head.weight, model.out_head.weight)
    # another config is another cache file: the old one is not used for it
    _, _, description = load_base_model({**TINY, "n_layers": 1}, TINY_RECIPE, models_dir=tmp_path)
    assert "pretrained now" in description and len(list(tmp_path.iterdir())) == 2


def test_gpt2_is_preferred_when_its_weights_load(tmp_path, monkeypatch):
    stand_in = GPTModel(TINY).eval()
    monkeypatch.setattr(ch6a, "load_pretrained_gpt2", lambda *args, **kwargs: stand_in)
    model, cfg, description = load_base_model(TINY, TINY_RECIPE, models_dir=tmp_path)
    assert model is stand_in and "GPT-2 124M" in description and cfg["context_length"] == 1024
    assert list(tmp_path.iterdir()) == []  # nothing pretrained
    _, _, description = load_base_model(TINY, TINY_RECIPE, models_dir=tmp_path, use_gpt2=False)
    assert "self-pretrained" in description
