"""Stage 6a: the finetuning building blocks, checked on tiny models and hand-written batches, and
the GPT-2 path end to end on random weights of GPT-2's shapes. (6b's tests: test_stage6b_instructions.py.)"""
import json
import math
import threading

import pytest
import tiktoken
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import course.ch6a_classification as ch6a
import course.infra
from course.ch5b_modern import SMOLLM2_135M_CONFIG, LlamaModel
from helpers import (GPTModel, NaiveBayes, SpamDataset, TopLayers, TrunkOutputs, calc_accuracy_loader,
                     SimilarLengthBatches, calc_loss_batch, calc_loss_batch_classifier, classify, gpt2_config,
                     hidden_states_before, last_real_token_logits, load_base_model, load_checkpoint, make_adamw,
                     make_classifier, random_base_model, save_checkpoint, train_model_simple, word_counts, words)

E = 50256  # GPT-2's <|endoftext|>, the padding id
I = -100   # cross_entropy's default ignore_index
TINY = {"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2, "n_layers": 2,
        "drop_rate": 0.0, "qkv_bias": False}
TINY_LLAMA = {**SMOLLM2_135M_CONFIG, "vocab_size": 50257, "context_length": 16, "emb_dim": 16, "n_heads": 4,
              "n_kv_heads": 2, "n_layers": 3, "hidden_dim": 24}  # GPT-2's vocabulary, so tiktoken's ids fit


@pytest.fixture(scope="module")
def tokenizer():
    return tiktoken.get_encoding("gpt2")


def tiny_classifier(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    model = GPTModel(cfg) if "qkv_bias" in cfg else LlamaModel(cfg)
    model.out_head = nn.Linear(cfg["emb_dim"], 2)
    return model.eval()


def pad(ids, length):
    return ids + [E] * (length - len(ids))


# --- the classifier ----------------------------------------------------------------------------

BOTH = pytest.mark.parametrize("cfg", [TINY, TINY_LLAMA], ids=["gpt", "llama"])


@BOTH
def test_last_real_token_ignores_any_amount_of_padding(tokenizer, cfg):
    model = tiny_classifier(cfg=cfg)
    ids = tokenizer.encode("Win a free prize now")
    with torch.no_grad():
        reference = model(torch.tensor([ids]))[0, -1]  # no padding at all
        for length in range(len(ids), cfg["context_length"] + 1):
            padded = torch.tensor([pad(ids, length)])
            logits = last_real_token_logits(model, padded, torch.tensor([len(ids)]))
            assert torch.allclose(logits[0], reference, atol=1e-5), length


def test_last_position_does_change_with_padding(tokenizer):
    """The bug the helper avoids: the output at the last position depends on the padding."""
    model = tiny_classifier()
    ids = tokenizer.encode("Win a free prize now")
    with torch.no_grad():
        short = model(torch.tensor([pad(ids, len(ids) + 2)]))[0, -1]
        long = model(torch.tensor([pad(ids, len(ids) + 8)]))[0, -1]
    assert not torch.allclose(short, long, atol=1e-5)


@BOTH
def test_last_real_token_per_row_of_a_mixed_batch(tokenizer, cfg):
    model = tiny_classifier(seed=1, cfg=cfg)
    texts = ["Hi", "Call me later, ok?", "URGENT! You have won a 1 week FREE membership"]
    encoded = [tokenizer.encode(t) for t in texts]
    batch = torch.tensor([pad(ids, cfg["context_length"]) for ids in encoded])
    num_real = torch.tensor([len(ids) for ids in encoded])
    with torch.no_grad():
        logits = last_real_token_logits(model, batch, num_real)
        for row, ids in enumerate(encoded):
            assert torch.allclose(logits[row], model(torch.tensor([ids]))[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="only padding"):
        last_real_token_logits(model, torch.full((1, 4), E), torch.tensor([0]))


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


def book_split():
    rows = ch6a.read_sms_collection(course.infra.get_data_file("SMSSpamCollection.tsv"))
    return rows, ch6a.random_split(ch6a.create_balanced_dataset(rows), 0.7, 0.1)


def test_the_split_is_the_books():
    # Expected values from Raschka's chapter 6 code itself (pd.read_csv, sample(random_state=123)),
    # run here with pandas 3.1.1: the counts and the first two messages of each split.
    rows, (train, val, test) = book_split()
    assert (len(rows), sum(label for _, label in rows)) == (5572, 747)
    assert [(len(split), sum(label for _, label in split)) for split in (train, val, test)] == \
        [(1045, 517), (149, 79), (300, 151)]
    assert [text[:30] for text, _ in train[:2]] == ["Dude how do you like the buff ", "Tessy..pls do me a favor. Pls "]
    assert [text[:30] for text, _ in val[:2]] == ["Mila, age23, blonde, new in UK", "Hungry gay guys feeling hungry"]
    assert [text[:30] for text, _ in test[:2]] == ["85233 FREE>Ringtone!Reply REAL", "Ur cash-balance is currently 5"]


def test_spam_dataset_truncates_pads_and_counts_real_tokens(tokenizer):
    long_text = "free " * 30
    dataset = SpamDataset(["Hi there", long_text], [0, 1], tokenizer, max_length=6, pad_token_id=7)
    short_ids = tokenizer.encode("Hi there")
    (ids, num_real), label = dataset[0]
    assert ids.tolist() == short_ids + [7] * (6 - len(short_ids)) and num_real.item() == len(short_ids)
    (ids, num_real), label = dataset[1]
    assert ids.tolist() == tokenizer.encode(long_text)[:6] and num_real.item() == 6
    assert label.item() == 1 and dataset.num_truncated == 1


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_message_is_a_clear_error(tokenizer, text):
    with pytest.raises(ValueError, match="no text"):
        SpamDataset(["fine", text], [0, 1], tokenizer, max_length=8, pad_token_id=E)
    with pytest.raises(ValueError, match="no text"):
        classify(text, tiny_classifier(), tokenizer, "cpu")


def test_labels_must_match_texts(tokenizer):
    with pytest.raises(ValueError, match="one label per text"):
        SpamDataset(["a", "b"], [0], tokenizer, max_length=8, pad_token_id=E)


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


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_helpers_leave_the_model_in_the_mode_they_found_it_in(tokenizer, mode):
    model = tiny_classifier().train(mode == "train")
    dataset = SpamDataset(["Hi there", "WIN cash now"], [0, 1], tokenizer, max_length=8, pad_token_id=E)
    calc_accuracy_loader(DataLoader(dataset, batch_size=2), model, "cpu")
    assert model.training == (mode == "train")
    classify("Hi there", model, tokenizer, "cpu")
    assert model.training == (mode == "train")
    TrunkOutputs(model, dataset, 1, "cpu", bf16=False)
    assert model.training == (mode == "train")


# --- Naive Bayes, against hand-computed values ---------------------------------------------------

NB_TEXTS = ["free prize", "Free, free call!", "see you", "you call"]
NB_LABELS = [1, 1, 0, 0]


def test_words_and_word_counts():
    assert words("Free, free CALL_me at 0800!") == ["free", "free", "call_me", "at", "0800"]
    vocab = {"call": 0, "free": 1}
    assert word_counts(["free free call", "nothing known"], vocab).tolist() == [[1, 2], [0, 0]]


def test_naive_bayes_on_a_hand_computed_example():
    """Vocabulary call, free, prize, see, you. Word counts in the spam texts 1, 3, 1, 0, 0 (5 words),
    in the others 1, 0, 0, 1, 2 (4 words); with add-one smoothing P(w | spam) = (count + 1) / (5 + 5)
    and P(w | not spam) = (count + 1) / (4 + 5); both classes have prior 1/2."""
    bayes = NaiveBayes(NB_TEXTS, NB_LABELS)
    assert list(bayes.vocab) == ["call", "free", "prize", "see", "you"]
    expected = torch.tensor([[2 / 9, 1 / 9, 1 / 9, 2 / 9, 3 / 9], [2 / 10, 4 / 10, 2 / 10, 1 / 10, 1 / 10]])
    assert torch.allclose(bayes.log_likelihood, expected.log())
    assert torch.allclose(bayes.log_prior, torch.tensor([0.5, 0.5]).log())
    # "free call": spam 0.4 * 0.2 = 0.08 > not spam (1/9) * (2/9) = 0.025 -> spam
    # "you you never": spam 0.1 * 0.1 = 0.01 < not spam (3/9)^2 = 0.11 ("never" is not in the vocabulary)
    # "prize see": spam 0.2 * 0.1 = 0.02 < not spam (1/9) * (2/9) = 0.0247 -> not spam, narrowly
    assert bayes.predict(["free call", "you you never", "prize see"]).tolist() == [1, 0, 0]


def test_naive_bayes_uses_the_class_priors():
    """Three not-spam texts and one spam text: priors 3/4 and 1/4 decide a text of unknown words."""
    bayes = NaiveBayes(["a", "b", "c", "d"], [0, 0, 0, 1])
    assert torch.allclose(bayes.log_prior.exp(), torch.tensor([0.75, 0.25]))
    assert bayes.predict(["zzz"]).tolist() == [0]


def test_naive_bayes_agrees_with_scikit_learn():
    sklearn = pytest.importorskip("sklearn", reason="scikit-learn is an optional reference")
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB
    _, (train, _, test) = book_split()
    texts, labels = [t for t, _ in train], [l for _, l in train]
    vectorizer = CountVectorizer(token_pattern=r"\w+", lowercase=True)
    reference = MultinomialNB(alpha=1.0).fit(vectorizer.fit_transform(texts), labels)
    expected = reference.predict(vectorizer.transform([t for t, _ in test]))
    assert NaiveBayes(texts, labels).predict([t for t, _ in test]).tolist() == expected.tolist()


def test_naive_bayes_refuses_mismatched_input():
    with pytest.raises(ValueError, match="one label per text"):
        NaiveBayes(["a", "b"], [0])
    with pytest.raises(ValueError, match="at least one text"):
        NaiveBayes([], [])


# --- the base models, the new head, the frozen layers computed once ----------------------------

def test_make_classifier_checks_the_number_of_blocks():
    with pytest.raises(ValueError, match="trainable_blocks=3"):
        make_classifier(GPTModel(TINY), trainable_blocks=3)


@BOTH
def test_make_classifier_trains_only_the_top_and_builds_the_head_where_the_model_is(cfg):
    with torch.device("meta"):  # shapes only: a device that is not the CPU
        model = GPTModel(cfg) if "qkv_bias" in cfg else LlamaModel(cfg)
    make_classifier(model, trainable_blocks=1)
    assert model.out_head.weight.device.type == "meta" and model.out_head.weight.shape == (2, cfg["emb_dim"])
    last = len(model.trf_blocks) - 1
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters()
                         if name.startswith((f"trf_blocks.{last}.", "final_norm.", "out_head."))}


def test_random_base_models_have_the_shapes_of_the_pretrained_ones():
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in random_base_model("gpt2").named_parameters()}
        assert shapes == {name: p.shape for name, p in GPTModel(gpt2_config("gpt2")).named_parameters()}
        smol = random_base_model("smollm2")
    assert sum(p.numel() for p in smol.parameters()) == 134_515_008  # SmolLM2-135M, its head tied
    with pytest.raises(ValueError, match="smollm2, gpt2"):
        load_base_model("gpt-2")


@BOTH
@pytest.mark.parametrize("first_block", [0, 1, 2])
def test_the_top_layers_on_hidden_states_compute_the_whole_model(tokenizer, cfg, first_block):
    model = tiny_classifier(seed=3, cfg=cfg)
    ids = torch.tensor([tokenizer.encode("Call me now to WIN a prize"), tokenizer.encode("see you at 8, ok?")[:7]])
    with torch.no_grad():
        hidden = hidden_states_before(model, first_block, ids)
        assert hidden.shape == (*ids.shape, cfg["emb_dim"])
        assert torch.allclose(TopLayers(model, first_block)(hidden), model(ids), atol=1e-5)
    top = TopLayers(model, first_block)
    assert all(a is b for a, b in zip(top.parameters(), [*model.trf_blocks[first_block:].parameters(),
                                                            *model.final_norm.parameters(),
                                                            *model.out_head.parameters()]))


def test_hidden_states_before_leaves_no_hook_behind(tokenizer):
    model = tiny_classifier()
    ids = torch.tensor([tokenizer.encode("hello there")])
    hidden_states_before(model, 1, ids)
    assert not model.trf_blocks[1]._forward_pre_hooks
    with torch.no_grad():
        assert model(ids).shape == (1, ids.shape[1], 2)  # the whole forward pass runs again


@BOTH
def test_trunk_outputs_do_not_depend_on_how_messages_are_batched(tokenizer, cfg):
    model = tiny_classifier(seed=4, cfg=cfg)
    texts = ["Hi", "Call me later, ok?", "URGENT! You have won a 1 week FREE membership", "k", "See you"]
    dataset = SpamDataset(texts, [0, 0, 1, 0, 0], tokenizer, max_length=10, pad_token_id=E)
    kept = TrunkOutputs(model, dataset, 1, "cpu", batch_size=2, bf16=False)
    for i in range(len(texts)):
        (hidden, num_real), label = kept[i]
        (ids, _), _ = dataset[i]
        alone = hidden_states_before(model, 1, ids[None, :num_real])[0]
        assert hidden.shape == (10, cfg["emb_dim"]) and label == dataset.labels[i]
        assert torch.allclose(hidden[:num_real], alone, atol=1e-5)
        assert not hidden[num_real:].any()  # zeros after the message


def test_training_on_kept_hidden_states_changes_only_the_top(tokenizer):
    model = make_classifier(GPTModel(TINY).eval(), trainable_blocks=1)
    texts = ["Win a free prize, call now", "See you at lunch?", "URGENT: claim your cash", "ok thanks"] * 2
    dataset = SpamDataset(texts, [1, 0, 1, 0] * 2, tokenizer, max_length=12, pad_token_id=E)
    kept = TrunkOutputs(model, dataset, 1, "cpu", bf16=False)
    top = TopLayers(model, 1)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loader = DataLoader(kept, batch_size=4)
    optimizer = make_adamw([p for p in top.parameters() if p.requires_grad], lr=1e-2)
    losses, _, _ = train_model_simple(top, loader, loader, optimizer, "cpu", num_epochs=3, eval_freq=1,
                                      eval_iter=2, calc_loss=calc_loss_batch_classifier)  # chapter 4's loop
    assert len(losses) == 6 and losses[-1] < losses[0]
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(("trf_blocks.1.", "final_norm.", "out_head.")) for name in changed)


def test_similar_length_batches_cover_each_item_once_per_epoch_with_little_padding():
    torch.manual_seed(0)
    lengths = torch.randint(1, 65, (203,))
    sampler = SimilarLengthBatches(lengths, batch_size=8, window=4, seed=1)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 203 // 8 and all(len(batch) == 8 for batch in batches)
        seen = [i for batch in batches for i in batch]
        assert len(set(seen)) == len(seen)  # no item twice in an epoch
        assert len(seen) >= 203 - 4 * 7  # at most one incomplete batch left out per window of 4 batches
    assert epochs[0] != epochs[1]  # new batches each epoch
    assert [list(SimilarLengthBatches(lengths, 8, 4, seed=1)) for _ in range(2)] == [epochs[0]] * 2  # seeded
    padded = lambda batches: sum(len(b) * lengths[b].max().item() for b in batches)
    shuffled = [b.tolist() for b in torch.randperm(203).split(8) if len(b) == 8]
    assert padded(epochs[0]) < 0.8 * padded(shuffled)  # far less padding than random batches
    with pytest.raises(ValueError, match="batch_size"):
        SimilarLengthBatches(lengths[:3], batch_size=8)


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


@pytest.mark.slow  # a 124M model: a 500 MB file, a frozen pass, two training steps
def test_gpt2_path_end_to_end(gpt2_shaped_weights, tmp_path, monkeypatch, tokenizer):
    mirror, hf_model = gpt2_shaped_weights
    if (course.infra.DATA_DIR / "gpt2" / "gpt2" / "model.safetensors").exists():
        pytest.skip("real GPT-2 weights in data/ would be found first")
    monkeypatch.setenv("LLM_DATA_MIRROR", str(mirror))
    monkeypatch.setattr(course.infra, "_verified", lambda path, *args: path)  # random weights: no hash check
    # the switch picks them up, and they compute what Hugging Face's GPT-2 computes
    model, gpt2_tokenizer, pad_id, description = load_base_model("gpt2")
    assert "GPT-2" in description and "124M" in description and pad_id == E and not model.training
    assert gpt2_tokenizer.encode("Win a free prize") == tokenizer.encode("Win a free prize")
    ids = torch.tensor([tokenizer.encode("Win a free prize, call now")])
    with torch.no_grad():
        assert torch.allclose(model(ids), hf_model(ids).logits, atol=1e-4)
    # the book's layers are the only trainable ones; the frozen ones are computed once
    torch.manual_seed(123)
    make_classifier(model, trainable_blocks=1)
    texts = ["Win a free prize, call now", "See you at lunch?", "URGENT: claim your cash", "ok thanks"]
    dataset = SpamDataset(texts, [1, 0, 1, 0], tokenizer, max_length=12, pad_token_id=pad_id)
    kept = TrunkOutputs(model, dataset, 11, "cpu", bf16=False)
    top = TopLayers(model, 11)
    loader = DataLoader(kept, batch_size=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in top.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.1)
    train_model_simple(top, loader, loader, optimizer, "cpu", num_epochs=1, eval_freq=1, eval_iter=1,
                       calc_loss=calc_loss_batch_classifier)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(n.startswith(("trf_blocks.11.", "final_norm.", "out_head.")) for n in changed)
    assert "trf_blocks.11.ff.layers.0.weight" in changed
    # the saved top layers, loaded into a fresh base, give the same classifier
    path = tmp_path / "classifier.pth"
    save_checkpoint(path, top, base="gpt2")
    reloaded, _, _, _ = load_base_model("gpt2")
    make_classifier(reloaded, trainable_blocks=1)
    assert load_checkpoint(path, TopLayers(reloaded, 11))["base"] == "gpt2"
    model.eval()
    (batch, num_real), _ = next(iter(DataLoader(dataset, batch_size=4)))
    with torch.no_grad():
        assert torch.equal(last_real_token_logits(reloaded, batch, num_real), last_real_token_logits(model, batch, num_real))
    assert [classify(t, reloaded, tokenizer, "cpu") for t in texts] == [classify(t, model, tokenizer, "cpu") for t in texts]
