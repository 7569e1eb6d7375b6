"""Stage 6a: the classification building blocks, checked on tiny models and hand-written batches,
and the GPT-2 path end to end on random weights of GPT-2's shapes. (6b's tests: test_stage6b_instructions.py.)"""
import threading

import pytest
import tiktoken
import torch
import torch.nn as nn

import course.ch6a_classification as ch6a  # where load_base_model looks GPT-2 up
import course.infra
from helpers import (BOOK_FINETUNE, CompactTokenizer, DataFileError, GPTModel, SpamDataset,
                     base_model_path, calc_loss_batch, classify, compact_tokenizer, gpt2_config,
                     get_data_file, last_real_token_logits, load_base_model, load_checkpoint,
                     make_classifier, save_checkpoint, to_full_vocabulary, train_classifier_simple)

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


def test_read_sms_collection_reads_quotes_as_pandas_does(tmp_path):
    # csv's rules, as pandas applies them in the book: a field that opens with a quote ends at the
    # closing one (the quotes dropped), even past a line break; a quote inside a field is kept.
    path = tmp_path / "sms.tsv"
    path.write_text('ham\tSee you at "8"\nspam\t"WIN" a prize\nham\t"Never closed\nham\tnext"\n', encoding="utf-8")
    assert ch6a.read_sms_collection(path) == [('See you at "8"', 0), ("WIN a prize", 1),
                                               ("Never closed\nham\tnext", 0)]


@pytest.mark.parametrize("line", ["ham See you", "spam\tWIN\tnow", "Ham\tSee you"])
def test_read_sms_collection_rejects_a_malformed_line(tmp_path, line):
    path = tmp_path / "sms.tsv"
    path.write_text(f"ham\tfine\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is not a label"):
        ch6a.read_sms_collection(path)


def test_the_split_is_the_books():
    # Expected values from Raschka's chapter 6 code itself (pd.read_csv, sample(random_state=123)),
    # run here with pandas 3.1.1: the counts and the first two messages of each split.
    rows = ch6a.read_sms_collection(get_data_file("SMSSpamCollection.tsv"))
    assert (len(rows), sum(label for _, label in rows)) == (5572, 747)
    train, val, test = ch6a.random_split(ch6a.create_balanced_dataset(rows), 0.7, 0.1)
    assert [(len(split), sum(label for _, label in split)) for split in (train, val, test)] == \
        [(1045, 517), (149, 79), (300, 151)]
    assert [text[:30] for text, _ in train[:2]] == ["Dude how do you like the buff ", "Tessy..pls do me a favor. Pls "]
    assert [text[:30] for text, _ in val[:2]] == ["Mila, age23, blonde, new in UK", "Hungry gay guys feeling hungry"]
    assert [text[:30] for text, _ in test[:2]] == ["85233 FREE>Ringtone!Reply REAL", "Ur cash-balance is currently 5"]


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


# --- the stand-in base and its cache -------------------------------------------------------------

TINY_RECIPE = {"steps": 2, "batch_size": 2, "max_length": 8, "lr": 1e-3, "weight_decay": 0.1,
               "val_fraction": 0.25, "seed": 123, "min_count": 1}
TEXTS = ["Hello there, how are you? I am fine, thanks for asking.",
         "Call me now to win a prize! Text WIN to 8008 now.",
         "See you at dinner tonight, don't be late ok?",
         "Ok lar... Joking wif u oni... see you soon."] * 2


def test_cache_name_follows_config_recipe_and_texts(tmp_path):
    name = base_model_path(TINY, TINY_RECIPE, TEXTS, tmp_path)
    assert name.parent == tmp_path
    assert base_model_path(dict(reversed(list(TINY.items()))), TINY_RECIPE, TEXTS, tmp_path) == name  # key order
    assert base_model_path({**TINY, "n_layers": 3}, TINY_RECIPE, TEXTS, tmp_path) != name
    assert base_model_path({**TINY, "context_length": 32}, TINY_RECIPE, TEXTS, tmp_path) != name
    assert base_model_path(TINY, {**TINY_RECIPE, "steps": 3}, TEXTS, tmp_path) != name
    assert base_model_path(TINY, TINY_RECIPE, TEXTS[:-1], tmp_path) != name
    assert base_model_path(TINY, TINY_RECIPE, ["x" + TEXTS[0]] + TEXTS[1:], tmp_path) != name


def test_compact_tokenizer_round_trips_and_refuses_unknown_tokens(tokenizer):
    text = "<|endoftext|>".join(TEXTS)
    vocab = sorted(set(tokenizer.encode(text, allowed_special={"<|endoftext|>"})))
    compact = CompactTokenizer(tokenizer, vocab)
    ids = compact.encode(TEXTS[1])
    assert sorted(set(ids)) == sorted(set(ids) & set(range(len(vocab))))  # ids 0..len(vocab)-1
    assert [vocab[i] for i in ids] == tokenizer.encode(TEXTS[1])
    assert compact.decode(ids) == TEXTS[1]
    assert compact.num_inputs == compact.num_outputs == len(vocab)  # no rare tokens: no shared row
    assert compact.output_targets(torch.tensor(ids)).tolist() == ids
    with pytest.raises(ValueError, match="compact vocabulary"):
        compact.encode("Photosynthesis")


def test_tokens_seen_fewer_than_min_count_times_share_one_output_row(tokenizer):
    """Counted by hand: "hello" and " hello" occur twice, " world", " there" and <|endoftext|> once."""
    [hello], [space_hello], [world], [there] = (tokenizer.encode(t) for t in ("hello", " hello", " world", " there"))
    compact = compact_tokenizer(["hello hello hello world", "hello there"], min_count=2)
    assert compact.vocab == sorted([hello, space_hello])
    assert compact.rare == sorted([world, there, E])
    assert compact.rare_id == 2 and compact.num_outputs == 3 and compact.num_inputs == 6
    ids = compact.encode("hello there world")
    rare_ids = [3 + compact.rare.index(t) for t in (there, world)]  # after the shared row, id 2
    assert ids == [compact.vocab.index(hello), *rare_ids]
    assert compact.decode(ids) == "hello there world"  # every token keeps its own input id
    assert compact.output_targets(torch.tensor(ids)).tolist() == [compact.vocab.index(hello), 2, 2]
    assert compact.decode([compact.vocab.index(hello), 2]) == "hello<|rare|>"
    everything = compact_tokenizer(["hello hello hello world", "hello there"], min_count=1)
    assert everything.rare == [] and everything.vocab == sorted([hello, space_hello, world, there, E])


def test_full_vocabulary_model_computes_what_the_compact_model_did(tokenizer):
    """The expanded model, fed GPT-2 ids, gives the compact model's scores at the corpus tokens, and
    zero scores at every other token."""
    vocab = sorted(set(tokenizer.encode("<|endoftext|>".join(TEXTS), allowed_special={"<|endoftext|>"})))
    torch.manual_seed(0)
    compact_model = GPTModel({**TINY, "vocab_size": len(vocab)}).eval()
    compact = CompactTokenizer(tokenizer, vocab)
    full = to_full_vocabulary(compact_model, compact, TINY).eval()
    gpt2_ids = tokenizer.encode(TEXTS[0])
    with torch.no_grad():
        expected = compact_model(torch.tensor([compact.encode(TEXTS[0])]))
        logits = full(torch.tensor([gpt2_ids]))
    assert logits.shape[-1] == 50257
    assert torch.allclose(logits[..., vocab], expected, atol=1e-5)
    others = torch.ones(50257, dtype=torch.bool)
    others[vocab] = False
    assert torch.equal(logits[..., others], torch.zeros_like(logits[..., others]))


def test_full_vocabulary_model_reads_rare_tokens_as_the_compact_model_did(tokenizer):
    """With a shared row: each rare token keeps its trained embedding, so on text with rare tokens
    the full model gives the compact model's scores at the common tokens; the rest are zero."""
    compact = compact_tokenizer(TEXTS[:3], min_count=2)
    assert compact.rare and compact.vocab
    torch.manual_seed(0)
    compact_model = GPTModel({**TINY, "vocab_size": compact.num_inputs})
    compact_model.out_head = nn.Linear(TINY["emb_dim"], compact.num_outputs, bias=False)
    full = to_full_vocabulary(compact_model.eval(), compact, TINY).eval()
    text = TEXTS[1]
    assert max(compact.encode(text)) > compact.rare_id  # the text has rare tokens
    with torch.no_grad():
        expected = compact_model(torch.tensor([compact.encode(text)]))
        logits = full(torch.tensor([tokenizer.encode(text)]))
    assert torch.allclose(logits[..., compact.vocab], expected[..., :len(compact.vocab)], atol=1e-5)
    others = torch.ones(50257, dtype=torch.bool)
    others[compact.vocab] = False
    assert torch.equal(logits[..., others], torch.zeros_like(logits[..., others]))


def test_pretraining_with_a_shared_row_gives_a_full_vocabulary_model(tmp_path):
    recipe, texts = {**TINY_RECIPE, "min_count": 2}, TEXTS[:4]  # each text once: many rare tokens
    compact = compact_tokenizer(texts, recipe["min_count"])
    assert compact.rare
    model, _, _ = load_base_model(None, TINY, recipe, texts, models_dir=tmp_path)
    trained_rows = model.out_head.weight.ne(0).any(dim=1).nonzero().flatten().tolist()
    assert trained_rows == compact.vocab  # a row per common token; the rare ones' are zero


def no_gpt2(*args, **kwargs):
    raise DataFileError("Course file 'gpt2/gpt2/model.safetensors' was not found (test).")


def test_stand_in_is_cached_and_reloaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ch6a, "load_pretrained_gpt2", no_gpt2)
    model, cfg, description = load_base_model("gpt2", TINY, TINY_RECIPE, TEXTS, models_dir=tmp_path)
    assert cfg == TINY and "stand-in" in description and not model.training
    assert [p.name for p in tmp_path.glob("*.pth")] == [base_model_path(TINY, TINY_RECIPE, TEXTS, tmp_path).name]
    again, _, _ = load_base_model(None, TINY, TINY_RECIPE, TEXTS, models_dir=tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    torch.manual_seed(TINY_RECIPE["seed"])  # the weights pretraining started from
    fresh = GPTModel({**TINY, "vocab_size": model.out_head.weight.ne(0).any(dim=1).sum().item()})
    assert not torch.equal(fresh.trf_blocks[0].att.W_query.weight, model.trf_blocks[0].att.W_query.weight)
    # another config is another cache file: the old one is not used for it
    load_base_model(None, {**TINY, "n_layers": 1}, TINY_RECIPE, TEXTS, models_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pth"))) == 2
    with pytest.raises(ValueError, match="texts"):
        load_base_model(None, TINY, TINY_RECIPE, None, models_dir=tmp_path)


def test_a_second_process_waits_for_the_stand_in_and_loads_it(tmp_path, monkeypatch):
    """While one process holds the cache's lock (pretraining), another asking for the same stand-in
    waits, then loads the model the first one saved instead of pretraining it again."""
    from filelock import FileLock
    path = base_model_path(TINY, TINY_RECIPE, TEXTS, tmp_path)
    torch.manual_seed(0)
    first = GPTModel(TINY)  # what the "first process" pretrained
    results = []
    monkeypatch.setattr(ch6a, "pretrain_base_model", lambda *args: pytest.fail("pretrained a second time"))
    with FileLock(path.with_name(path.name + ".lock")):
        second = threading.Thread(target=lambda: results.append(
            load_base_model(None, TINY, TINY_RECIPE, TEXTS, models_dir=tmp_path)))
        second.start()
        second.join(timeout=0.5)
        assert second.is_alive() and not results  # waiting for the lock
        save_checkpoint(path, first, config=TINY, recipe=TINY_RECIPE)
    second.join(timeout=30)
    assert not second.is_alive() and len(results) == 1
    for (name, a), (_, b) in zip(first.state_dict().items(), results[0][0].state_dict().items()):
        assert torch.equal(a, b), name


def fallback_lines(output):
    return [line for line in output.splitlines() if line.startswith("No GPT-2")]


def test_the_fallback_line_appears_exactly_when_no_gpt2_weights_can_be_had(tmp_path, monkeypatch, capsys):
    """The real lookup (data/, an empty mirror, the Hugging Face cache, a download that fails)."""
    def offline(entry):
        raise OSError("no network (test)")
    monkeypatch.setenv("LLM_DATA_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setattr(course.infra, "_from_hugging_face", offline)
    if (course.infra.DATA_DIR / "gpt2" / "gpt2" / "model.safetensors").exists():
        pytest.skip("GPT-2's weights are in data/: there is no fallback to see")
    model, cfg, description = load_base_model("gpt2", TINY, TINY_RECIPE, TEXTS, models_dir=tmp_path)
    lines = fallback_lines(capsys.readouterr().out)
    assert len(lines) == 1 and "'gpt2'" in lines[0] and "stand-in" in lines[0] and "below" in lines[0]
    assert "no network (test)" in lines[0]  # and why
    assert cfg == TINY and "stand-in" in description
    load_base_model(None, TINY, TINY_RECIPE, TEXTS, models_dir=tmp_path)  # asked for the stand-in: no line
    assert fallback_lines(capsys.readouterr().out) == []


def test_make_classifier_checks_the_number_of_blocks():
    with pytest.raises(ValueError, match="trainable_blocks=3"):
        make_classifier(GPTModel(TINY), trainable_blocks=3)


# --- the GPT-2 path, end to end, on random weights of GPT-2's shapes ------------------------------

@pytest.fixture(scope="module")
def gpt2_shaped_weights(tmp_path_factory):
    """A model.safetensors with Hugging Face GPT-2 124M's names and shapes, random values, and the
    Hugging Face model that holds them (an independent implementation to compare with)."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # GPT-2 124M's shapes
    state = {name: tensor.contiguous() for name, tensor in hf_model.state_dict().items()
             if name != "lm_head.weight"}  # tied to wte, stored once, as OpenAI's file does
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "gpt2" / "gpt2").mkdir(parents=True)
    save_file(state, mirror / "gpt2" / "gpt2" / "model.safetensors")
    return mirror, hf_model


@pytest.mark.slow  # a 124M model: a 500 MB file, two training steps
def test_gpt2_path_end_to_end(gpt2_shaped_weights, tmp_path, monkeypatch, capsys, tokenizer):
    mirror, hf_model = gpt2_shaped_weights
    if (course.infra.DATA_DIR / "gpt2" / "gpt2" / "model.safetensors").exists():
        pytest.skip("real GPT-2 weights in data/ would be found first")
    monkeypatch.setenv("LLM_DATA_MIRROR", str(mirror))
    monkeypatch.setattr(course.infra, "_verified", lambda path, *args: path)  # random weights: no hash check
    # the default setting picks them up, and they compute what Hugging Face's GPT-2 computes
    model, cfg, description = load_base_model(texts=TEXTS, models_dir=tmp_path)
    assert cfg == gpt2_config("gpt2") and "GPT-2" in description and "124M" in description
    assert fallback_lines(capsys.readouterr().out) == [] and list(tmp_path.iterdir()) == []
    ids = torch.tensor([tokenizer.encode("Win a free prize, call now")])
    with torch.no_grad():
        assert torch.allclose(model(ids), hf_model(ids).logits, atol=1e-4)
    # the book's layers are the only trainable ones
    torch.manual_seed(123)
    make_classifier(model, trainable_blocks=BOOK_FINETUNE["trainable_blocks"],
                    train_embeddings=BOOK_FINETUNE["train_embeddings"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {name for name, _ in model.named_parameters()
                if name.startswith(("trf_blocks.11.", "final_norm.", "out_head."))}
    assert trainable == expected and any(n.startswith("trf_blocks.11.att.") for n in trainable)
    # two training steps run, and change the trainable weights only
    texts = ["Win a free prize, call now", "See you at lunch?", "URGENT: claim your cash", "ok thanks"]
    dataset = SpamDataset(texts, [1, 0, 1, 0], tokenizer, max_length=12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=BOOK_FINETUNE["lr"], weight_decay=BOOK_FINETUNE["weight_decay"])
    train_classifier_simple(model, loader, loader, optimizer, "cpu", num_epochs=1, eval_freq=1, eval_iter=1)
    assert "step 0001" in capsys.readouterr().out  # two steps: 0000 and 0001
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= expected and "trf_blocks.11.ff.layers.0.weight" in changed
    # the saved classifier loads back and gives the same predictions
    path = tmp_path / "classifier.pth"
    save_checkpoint(path, model, config=cfg)
    reloaded = GPTModel(gpt2_config("gpt2"))
    reloaded.out_head = nn.Linear(cfg["emb_dim"], 2)
    load_checkpoint(path, reloaded)
    model.eval(), reloaded.eval()
    batch = next(iter(loader))[0]
    with torch.no_grad():
        assert torch.equal(last_real_token_logits(reloaded, batch), last_real_token_logits(model, batch))
    assert [classify(t, reloaded, tokenizer, "cpu") for t in texts] == [classify(t, model, tokenizer, "cpu") for t in texts]
