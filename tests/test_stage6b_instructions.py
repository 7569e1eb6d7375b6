"""Stage 6b: instruction finetuning's building blocks, checked on hand-written batches, hand-made
answers and tiny models; the GPT-2 medium switch end to end on random weights of its shapes; the
LLM judge against a fake Ollama server on 127.0.0.1."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import tiktoken
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from course.ch4_training import generate as generate_uncached  # chapter 4's loop: no cache, no padding
from course.ch6b_instructions import uncopied_words
from helpers import (BASE_PROMPT_FORMATS, PROMPT_FORMATS, RECIPES, SMOLLM2_135M_CONFIG, GPTModel, InstructionDataset, LlamaModel, TopLayers,
                     answer_f1, answer_words, calc_loss_batch, calc_loss_batch_at_targets, calc_response_loss,
                     encode_prompt, format_chatml, format_input, generate_responses, get_data_file, gpt2_config, has_key_answer,
                     hidden_states_before, instruction_collate_fn, judge_scores, load_checkpoint,
                     logits_at_targets, nearest_training_answer, ollama_is_running, random_base_model,
                     save_checkpoint, score_responses, train_model_simple, trunk_outputs, word_f1)

E = 50256  # GPT-2's <|endoftext|>, the padding id in these batches
I = -100   # cross_entropy's default ignore_index
TINY_GPT = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
            "drop_rate": 0.0, "qkv_bias": False}
TINY_LLAMA = {**SMOLLM2_135M_CONFIG, "vocab_size": 64, "context_length": 48, "emb_dim": 16, "n_heads": 4,
              "n_kv_heads": 2, "n_layers": 3, "hidden_dim": 32}


@pytest.fixture(scope="module")
def tokenizer():
    return tiktoken.get_encoding("gpt2")


class IdsTokenizer:
    """Token ids as text, for models with a made-up vocabulary."""

    def decode(self, ids):
        return " ".join(map(str, ids))


# --- the collate function ------------------------------------------------------------------------

BATCH = [([1, 2, 3, 4, 5], 2), ([6, 7], 1), ([8, 9, 10], 1)]  # (token ids, prompt length)


def test_collate_pads_shifts_and_masks_all_but_the_first_padding_token():
    inputs, targets = instruction_collate_fn(BATCH, pad_token_id=E, mask_prompt=False)
    assert torch.equal(inputs, torch.tensor([[1, 2, 3, 4, 5],
                                             [6, 7, E, E, E],
                                             [8, 9, 10, E, E]]))
    assert torch.equal(targets, torch.tensor([[2, 3, 4, 5, E],
                                              [7, E, I, I, I],
                                              [9, 10, E, I, I]]))


def test_collate_pads_with_the_token_it_is_given():
    inputs, targets = instruction_collate_fn([([5, 6], 1), ([7], 1)], pad_token_id=2, mask_prompt=False)
    assert torch.equal(inputs, torch.tensor([[5, 6], [7, 2]]))
    assert torch.equal(targets, torch.tensor([[6, 2], [2, I]]))


def test_collate_masks_the_prompt():
    _, targets = instruction_collate_fn(BATCH, pad_token_id=E, mask_prompt=True)
    # row 0: prompt [1, 2]; predicting token 2 is the prompt's job, so only that target is masked
    assert torch.equal(targets, torch.tensor([[I, 3, 4, 5, E],
                                              [7, E, I, I, I],
                                              [9, 10, E, I, I]]))


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = instruction_collate_fn(BATCH, pad_token_id=E, allowed_max_length=3, mask_prompt=False)
    assert torch.equal(inputs, torch.tensor([[1, 2, 3], [6, 7, E], [8, 9, 10]]))
    assert torch.equal(targets, torch.tensor([[2, 3, 4], [7, E, I], [9, 10, E]]))


def test_collate_keeps_a_padding_token_inside_the_text():
    """Padding is found by length, not by value: a real 50256 in the text stays a target."""
    _, targets = instruction_collate_fn([([7, E, 8], 1), ([9], 1)], pad_token_id=E, mask_prompt=False)
    assert torch.equal(targets, torch.tensor([[E, 8, E], [E, I, I]]))


def test_cross_entropy_ignores_the_masked_targets():
    inputs, targets = instruction_collate_fn(BATCH, pad_token_id=E, mask_prompt=True)
    torch.manual_seed(0)
    logits = torch.randn(*inputs.shape, 50257)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    kept = [(b, t) for b in range(targets.shape[0]) for t in range(targets.shape[1]) if targets[b, t] != I]
    manual = sum(-torch.log_softmax(logits[b, t], dim=-1)[targets[b, t]] for b, t in kept) / len(kept)
    assert len(kept) == 9
    assert torch.isclose(loss, manual, atol=1e-5)


def test_collate_rejects_an_example_left_without_targets():
    with pytest.raises(ValueError, match="allowed_max_length"):
        instruction_collate_fn([([1, 2, 3, 4], 3)], pad_token_id=E, allowed_max_length=2, mask_prompt=True)
    with pytest.raises(ValueError, match="empty"):
        instruction_collate_fn([], pad_token_id=E)


# --- the instruction data ------------------------------------------------------------------------

def test_format_input_with_and_without_input():
    header = ("Below is an instruction that describes a task. Write a response that appropriately "
              "completes the request.\n\n### Instruction:\n")
    assert format_input({"instruction": "Add.", "input": "2 + 2", "output": "4"}) == \
        header + "Add.\n\n### Input:\n2 + 2\n\n### Response:\n"
    assert format_input({"instruction": "Say hi.", "input": "", "output": "Hi"}) == \
        header + "Say hi.\n\n### Response:\n"


def test_format_chatml_is_one_user_turn_of_smollm2s_template():
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert format_chatml({"instruction": "Add.", "input": "2 + 2", "output": "4"}) == \
        system + "<|im_start|>user\nAdd.\n\n2 + 2<|im_end|>\n<|im_start|>assistant\n"
    assert format_chatml({"instruction": "Say hi.", "input": "", "output": "Hi"}) == \
        system + "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    assert BASE_PROMPT_FORMATS == {"smollm2": "chatml", "gpt2-medium": "alpaca"}


class RecordingTokenizer:
    """Records what encode() was given; one id per character."""

    def encode(self, text, allowed_special=frozenset()):
        self.calls = getattr(self, "calls", []) + [(text, set(allowed_special))]
        return [ord(c) for c in text]


def test_encode_prompt_allows_only_the_formats_own_special_tokens(tokenizer):
    entry = {"instruction": "Say hi.", "input": "", "output": "Hi there."}
    recorder = RecordingTokenizer()
    encode_prompt(entry, recorder, "chatml")
    encode_prompt(entry, recorder, "alpaca")
    assert recorder.calls == [(format_chatml(entry), {"<|im_start|>", "<|im_end|>"}), (format_input(entry), set())]
    assert encode_prompt(entry, tokenizer) == tokenizer.encode(format_input(entry))  # Alpaca by default
    with pytest.raises(ValueError):  # GPT-2's end-of-text inside an instruction is refused (tiktoken)
        encode_prompt({**entry, "instruction": "Say <|endoftext|>."}, tokenizer, "alpaca")
    with pytest.raises(ValueError, match="alpaca.*chatml"):
        encode_prompt(entry, tokenizer, "chat")
    assert set(PROMPT_FORMATS) == {"alpaca", "chatml"}


def test_instruction_dataset_in_chatml_keeps_the_prompt_apart():
    entry = {"instruction": "Say hi.", "input": "", "output": "Hi there."}
    token_ids, prompt_length = InstructionDataset([entry], RecordingTokenizer(), "chatml")[0]
    assert "".join(map(chr, token_ids)) == format_chatml(entry) + "Hi there."
    assert prompt_length == len(format_chatml(entry))


def test_instruction_dataset_records_the_prompt_length(tokenizer):
    entry = {"instruction": "Say hi.", "input": "", "output": "Hi there."}
    token_ids, prompt_length = InstructionDataset([entry], tokenizer)[0]
    assert token_ids[:prompt_length] == tokenizer.encode(format_input(entry))
    assert tokenizer.decode(token_ids[prompt_length:]) == "Hi there."
    with pytest.raises(ValueError, match="'output'"):
        InstructionDataset([{"instruction": "x", "input": ""}], tokenizer)


# --- the loss at the kept targets only ------------------------------------------------------------

def test_the_loss_at_kept_targets_is_cross_entropy_with_ignore_index():
    torch.manual_seed(0)
    model = GPTModel(TINY_GPT).train()
    inputs, targets = instruction_collate_fn(BATCH, pad_token_id=E, mask_prompt=True)
    # PyTorch's own masking, on the full logits, is the reference: the same loss, the same gradients
    reference = nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=I)
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss = calc_loss_batch_at_targets(inputs, targets, model, "cpu")
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert all(torch.allclose(p.grad, expected[name], atol=1e-6) for name, p in model.named_parameters())
    assert torch.allclose(loss, calc_loss_batch(inputs, targets, model, "cpu"), atol=1e-6)  # chapter 4's


def test_logits_at_targets_scores_only_the_kept_positions_and_restores_the_head():
    torch.manual_seed(0)
    model = GPTModel(TINY_GPT).eval()
    head = model.out_head
    inputs, targets = instruction_collate_fn(BATCH, pad_token_id=E, mask_prompt=True)
    logits, kept = logits_at_targets(model, inputs, targets)
    keep = targets != I
    assert logits.shape == (keep.sum().item(), TINY_GPT["vocab_size"]) == (9, 50257)
    assert torch.equal(kept, targets[keep])
    with torch.no_grad():
        assert torch.allclose(logits, model(inputs)[keep], atol=1e-6)
    assert model.out_head is head
    with pytest.raises(ValueError):  # a failing forward pass still puts the head back
        logits_at_targets(model, torch.zeros(1, 99, dtype=torch.long), torch.zeros(1, 99, dtype=torch.long))
    assert model.out_head is head


def test_the_response_loss_is_the_mean_over_kept_targets():
    torch.manual_seed(0)
    model = GPTModel(TINY_GPT).eval()
    batches = [instruction_collate_fn(BATCH[:2], pad_token_id=E), instruction_collate_fn(BATCH[2:], pad_token_id=E)]
    with torch.no_grad():
        total = sum(nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
                    for x, y in batches)
    count = sum((y != I).sum().item() for _, y in batches)
    assert calc_response_loss(batches, model, "cpu") == pytest.approx(total / count, rel=1e-6)


# --- the score that copying cannot win, on hand-made answers --------------------------------------

AUSTEN = {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "", "output": "Jane Austen."}
OPINION = {"instruction": "Categorize the following sentence as either factual or opinion-based.",
           "input": "Chocolate is the best dessert.", "output": "Opinion-based."}
DENMARK = {"instruction": "What is the capital of Denmark?", "input": "", "output": "The capital of Denmark is Copenhagen."}
SORT = {"instruction": "Sort the following list in descending order.", "input": "10, 2, 25", "output": "25, 10, 2."}


def test_answer_words_drop_case_punctuation_and_articles():
    assert answer_words("The author is Jane Austen.") == ["author", "is", "jane", "austen"]
    assert answer_words("An apple, a day!") == ["apple", "day"]
    assert answer_words("...") == []


def test_word_f1_on_hand_computed_values():
    assert word_f1(["jane", "austen"], ["jane", "austen"]) == 1.0
    assert word_f1([], ["jane", "austen"]) == 0.0
    assert word_f1(["charles", "dickens"], ["jane", "austen"]) == 0.0
    # shared: {sky, blue} = 2; precision 2/3, recall 2/2 -> F1 = 2 * (2/3) * 1 / (2/3 + 1) = 0.8
    assert word_f1(["sky", "is", "blue"], ["blue", "sky"]) == pytest.approx(0.8)


def test_answer_f1_gives_an_echo_nothing_and_the_answer_everything():
    assert answer_f1(DENMARK["instruction"], DENMARK) == 0.0
    assert answer_f1("", DENMARK) == 0.0
    assert answer_f1("Copenhagen.", DENMARK) == 1.0  # the only word the prompt does not give away
    assert answer_f1("The capital of Denmark is Copenhagen.", DENMARK) == 1.0
    assert answer_f1("The capital of Denmark is Aarhus.", DENMARK) == 0.0  # plain word F1 would give 0.8
    assert word_f1(answer_words("The capital of Denmark is Aarhus."), answer_words(DENMARK["output"])) == pytest.approx(0.8)
    # new words: reference {copenhagen}; response {copenhagen, city} -> precision 1/2, recall 1 -> 2/3
    assert answer_f1("Copenhagen, a city.", DENMARK) == pytest.approx(2 / 3)


def test_answer_f1_falls_back_to_word_f1_where_the_prompt_holds_every_word_of_the_reference():
    assert answer_f1("Opinion-based.", OPINION) == 1.0
    # the instruction repeated: 9 words (the article dropped), 2 of them the reference's -> P 2/9, R 1
    assert answer_f1(OPINION["instruction"], OPINION) == pytest.approx(4 / 11)
    assert answer_f1("25, 10, 2", SORT) == 1.0


def test_uncopied_words_drop_runs_of_three_words_from_the_prompt():
    assert uncopied_words(AUSTEN["instruction"], AUSTEN) == []
    assert uncopied_words("The author of Pride and Prejudice is Jane Austen.", AUSTEN) == ["is", "jane", "austen"]
    assert uncopied_words("Pride is great", AUSTEN) == ["pride", "is", "great"]  # one word is no copy
    assert uncopied_words("author of pride", AUSTEN, run=4) == ["author", "of", "pride"]


def test_key_answers_on_hand_made_responses():
    assert has_key_answer("Jane Austen.", AUSTEN)
    assert has_key_answer("It was written in 1813 by jane austen, a novelist.", AUSTEN)  # buried
    assert not has_key_answer("Charles Dickens.", AUSTEN)
    assert not has_key_answer("", AUSTEN)
    assert not has_key_answer("Austen, Jane", AUSTEN)  # words in order
    assert not has_key_answer("Hgx", {"instruction": "Symbol of mercury?", "input": "", "output": "Hg."})  # whole words
    assert has_key_answer("Opinion-based.", OPINION)
    assert not has_key_answer(OPINION["instruction"], OPINION)  # contains "opinion based", all copied
    assert not has_key_answer(f"{OPINION['instruction']} {OPINION['input']}", OPINION)
    with pytest.raises(ValueError, match="no words"):
        has_key_answer("anything", {**AUSTEN, "output": "..."})


def test_score_responses_on_hand_computed_values():
    entries = [AUSTEN, OPINION, DENMARK]
    score = score_responses(entries, ["The author is Jane Austen.", OPINION["instruction"], "Aarhus."])
    assert score["short_items"] == 2 and score["key_answers"] == 1
    # answer F1: Austen: the response's new words {is, jane, austen} vs the reference's {jane, austen}:
    # P 2/3, R 1 -> 0.8; the opinion echo: 4/11 (above); Aarhus: 0
    assert score["answer_f1"] == pytest.approx((0.8 + 4 / 11 + 0.0) / 3)
    # plain word F1: {author, is, jane, austen} vs {jane, austen} -> 2/3; the echo 4/11; Aarhus 0
    assert score["word_f1"] == pytest.approx((2 / 3 + 4 / 11 + 0.0) / 3)
    with pytest.raises(ValueError, match="one response per entry"):
        score_responses(entries, ["only one"])


def test_echoing_wins_nothing_on_the_books_test_items():
    """On the real 110 test items: plain word F1 rewards an echo; answer F1 and key answers do not."""
    with open(get_data_file("instruction-data.json"), encoding="utf-8") as f:
        test_data = json.load(f)[935:1045]
    echo = score_responses(test_data, [f"{e['instruction']} {e['input']}" for e in test_data])
    right = score_responses(test_data, [e["output"] for e in test_data])
    assert echo["word_f1"] > 0.4 and echo["answer_f1"] < 0.05 and echo["key_answers"] == 0
    assert right["answer_f1"] == right["word_f1"] == 1.0 and right["key_answers"] == right["short_items"] == 12


def test_nearest_training_answer_looks_up_the_most_similar_prompt():
    train = [{"instruction": "What is the chemical symbol for gold?", "input": "", "output": "Au."},
             {"instruction": "Translate 'cat' into French.", "input": "", "output": "Chat."},
             {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"}]
    assert nearest_training_answer({"instruction": "What is the chemical symbol for zinc?", "input": ""}, train) == "Au."
    assert nearest_training_answer({"instruction": "Translate 'dog' into French.", "input": ""}, train) == "Chat."
    assert nearest_training_answer({"instruction": "Sort them.", "input": "3, 1, 2"}, train) == "1, 2, 3"


# --- batched generation, the frozen layers' outputs and training the top layers --------------------

def tiny_llama(seed=0):
    torch.manual_seed(seed)
    return LlamaModel(TINY_LLAMA).eval()


def test_generate_responses_in_batches_equals_one_prompt_at_a_time():
    """The reference: chapter 4's loop on each prompt alone (no cache, no padding)."""
    model = tiny_llama()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15], [16, 17, 18, 19], [20, 21]]
    responses = generate_responses(model, IdsTokenizer(), prompts, end_id=3, max_new_tokens=6, batch_size=2)
    for prompt, response in zip(prompts, responses):
        out = generate_uncached(model, torch.tensor([prompt]), 6, TINY_LLAMA["context_length"], eos_id=3)
        new = out[0, len(prompt):].tolist()
        assert response == " ".join(map(str, new[:new.index(3)] if 3 in new else new))
    assert not model.training


def test_top_layers_on_the_frozen_layers_outputs_give_the_models_logits():
    model = tiny_llama(1)
    inputs, targets = instruction_collate_fn([([5, 6, 7, 8], 2), ([9, 10], 1)], pad_token_id=3)
    loader = [(inputs, targets)]
    for first_block in range(TINY_LLAMA["n_layers"] + 1):
        (hidden, kept), = trunk_outputs(model, loader, first_block, "cpu", bf16=False)
        assert torch.equal(kept, targets)
        with torch.no_grad():
            assert torch.allclose(TopLayers(model, first_block)(hidden), model(inputs), atol=1e-5)


def test_chapter_4s_loop_on_kept_batches_changes_only_the_top_and_lowers_the_loss(capsys):
    model = tiny_llama(2)
    batches = [instruction_collate_fn([([5, 6, 7, 8, 9], 2), ([10, 11, 12], 1)], pad_token_id=3),
               instruction_collate_fn([([13, 14, 15, 16], 2), ([17, 18], 1)], pad_token_id=3)]
    first_block = 2
    model.requires_grad_(False)
    top = TopLayers(model, first_block)
    for module in [*top.trf_blocks, top.final_norm]:
        module.requires_grad_(True)
    cached = trunk_outputs(model, batches, first_block, "cpu", bf16=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss_before = calc_response_loss(cached, top, "cpu")
    optimizer = torch.optim.AdamW([p for p in top.parameters() if p.requires_grad], lr=1e-2)
    loader = DataLoader(cached, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(0))
    train_losses, val_losses, _ = train_model_simple(top, loader, cached, optimizer, "cpu", num_epochs=10,
                                                     eval_freq=5, eval_iter=2, calc_loss=calc_loss_batch_at_targets)
    assert len(train_losses) == len(val_losses) == 4  # steps 0, 5, 10 and 15 of 20
    assert "Ep 1 (step 000000)" in capsys.readouterr().out
    assert calc_response_loss(cached, top, "cpu") < loss_before
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {name for name, _ in model.named_parameters()
                       if name.startswith(("trf_blocks.2.", "final_norm."))}


# --- the GPT-2 medium switch, end to end, on random weights of its shapes -------------------------

@pytest.mark.slow  # a 355M model: two training steps, a checkpoint of 1.4 GB
def test_gpt2_medium_recipe_end_to_end(tokenizer, tmp_path):
    recipe = RECIPES["gpt2-medium"]
    assert (recipe["trainable_blocks"], recipe["num_epochs"], recipe["lr"], recipe["weight_decay"],
            recipe["batch_size"], recipe["train_examples"]) == (24, 2, 5e-5, 0.1, 8, 935)  # the book's
    model = random_base_model("gpt2-medium")
    assert isinstance(model, GPTModel) and sum(p.numel() for p in model.parameters()) > 354_000_000
    first_block = len(model.trf_blocks) - recipe["trainable_blocks"]
    assert first_block == 0  # every block trains
    entries = [{"instruction": "Say hi.", "input": "", "output": "Hi there."},
               {"instruction": "Add.", "input": "2 + 2", "output": "4"}]
    batch = instruction_collate_fn(InstructionDataset(entries, tokenizer), pad_token_id=E)
    model.requires_grad_(False)
    top = TopLayers(model, first_block)
    for module in [*top.trf_blocks, top.final_norm]:
        module.requires_grad_(True)
    cached = trunk_outputs(model, [batch], first_block, "cpu", bf16=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in top.parameters() if p.requires_grad], lr=recipe["lr"],
                                  weight_decay=recipe["weight_decay"])
    train_model_simple(top, cached, cached, optimizer, "cpu", num_epochs=2, eval_freq=1, eval_iter=1,
                       calc_loss=calc_loss_batch_at_targets)
    changed = {name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"trf_blocks", "final_norm"}
    assert all(not torch.equal(model.trf_blocks[i].ff.layers[0].weight, before[f"trf_blocks.{i}.ff.layers.0.weight"])
               for i in range(24))
    prompts = [tokenizer.encode(format_input(entry)) for entry in entries]
    answers = generate_responses(model, tokenizer, prompts, end_id=E, max_new_tokens=3)
    path = tmp_path / "instruction-model.pth"
    save_checkpoint(path, model, base="gpt2-medium", recipe=recipe)
    reloaded = random_base_model("gpt2-medium", seed=7)
    assert load_checkpoint(path, reloaded)["base"] == "gpt2-medium"
    assert generate_responses(reloaded, tokenizer, prompts, end_id=E, max_new_tokens=3) == answers
    assert gpt2_config("gpt2-medium")["n_layers"] == 24


# --- the LLM judge, against a fake Ollama server on 127.0.0.1 -------------------------------------

class FakeOllama(BaseHTTPRequestHandler):
    requests = []

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"Ollama is running")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOllama.requests.append((self.path, body))
        prompt = body["messages"][0]["content"]
        reply = ["8", "5"] if "Jane Austen" in prompt.split("score the model response")[1] else ["no idea"]
        self.send_response(200)
        self.end_headers()
        for part in reply:  # streamed, one JSON object per line, as Ollama does
            self.wfile.write(json.dumps({"message": {"content": part}}).encode() + b"\n")

    def log_message(self, *args):
        pass


def test_judge_scores_with_a_fake_ollama_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOllama)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert ollama_is_running(url, timeout=2)
        entry = {"instruction": "Name the author of 'Pride and Prejudice'.", "input": "", "output": "Jane Austen."}
        scores, unreadable = judge_scores([entry, entry], ["Jane Austen.", "Dickens"], url=url)
        assert scores == [85] and unreadable == 1
        path, body = FakeOllama.requests[0]
        assert path == "/api/chat" and body["model"] == "llama3"
        assert body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
        assert format_input(entry) in body["messages"][0]["content"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert not ollama_is_running(url, timeout=0.5)  # the server is gone: no judge
