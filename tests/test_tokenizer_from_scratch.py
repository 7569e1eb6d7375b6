"""The from-scratch GPT-2 tokenizer (notebooks/LLM-bpe-from-scratch.ipynb, exported to
course/ch1b_tokenizer.py) against an independent reference, tiktoken: the same IDs on every text
the course uses, exact round trips on tricky and random Unicode, the same <|endoftext|> rules.
Also: the generated module is up to date with the notebook, and its exported cells hold only
definitions (importing it does no work and reads no file)."""
import ast
import json
import random

import pytest
import regex
import tiktoken

import helpers
from course import export
from course.ch1b_tokenizer import (ENDOFTEXT, GPT2_PATTERN, GPT2Tokenizer, bytes_to_unicode, load_encoder,
                                   load_merges, tiny_encode, train_bpe)

NOTEBOOK = export.ROOT / "notebooks" / "LLM-bpe-from-scratch.ipynb"
MODULE = export.ROOT / "course" / "ch1b_tokenizer.py"


@pytest.fixture(scope="module")
def ref():
    helpers.prepare_tiktoken_offline()
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def tok():
    return GPT2Tokenizer.from_files(helpers.get_data_file("encoder.json"), helpers.get_data_file("vocab.bpe"))


def read(name):
    with open(helpers.get_data_file(name), encoding="utf-8") as f:
        return f.read()


def sms_messages():
    lines = [line for line in read("SMSSpamCollection.tsv").splitlines() if line]
    assert all("\t" in line for line in lines)
    return [line.split("\t", 1)[1] for line in lines]


def instruction_fields():
    entries = json.loads(read("instruction-data.json"))
    return [entry[key] for entry in entries for key in ("instruction", "input", "output")]


def assert_same_ids(tok, ref, texts):
    mismatched = [t for t in texts if tok.encode(t) != ref.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ from tiktoken, e.g. {mismatched[0][:80]!r}"


# --- the same IDs as tiktoken on every course text ---------------------------------------------

@pytest.mark.parametrize("name", ["the-verdict.txt", "tinyshakespeare.txt"])
def test_course_text_files_match_tiktoken(tok, ref, name):
    text = read(name)
    ours = tok.encode(text)
    assert ours == ref.encode(text)
    assert tok.decode(ours) == text


def test_every_sms_message_matches_tiktoken(tok, ref):
    messages = sms_messages()
    assert len(messages) == 5574
    assert_same_ids(tok, ref, messages)


def test_every_instruction_field_matches_tiktoken(tok, ref):
    fields = instruction_fields()
    assert len(fields) == 3 * 1100
    assert_same_ids(tok, ref, fields)


# --- round trips ------------------------------------------------------------------------------

TRICKY = [
    "", " ", "  ", "\n", "\n\n\n", "\t \t", "   \t\n\n  ", "a  b   c", "hello   \n  world  ", "trailing   ",
    "  leading", "\r\n\r\n", "\u00a0\u2003\u3000 odd spaces", "zero\u200bwidth\u200djoiner",
    "don't I'll we've they're she'd I'm it's", "DON'T YOU'LL", "'s 't 're", "’curly’ quotes’s",
    "0", "1234567890123", "3.14159 1,000,000 -42 +7e10", "a1b2c3", "٣٤٥ Arabic-Indic digits",
    "😀", "😀😀😀", "👍🏽 👨‍👩‍👧 🏳️‍🌈 🦙", "naïve café Ørsted", "e\u0301 combining accent",
    "日本語のテキスト", "中文字", "한국어", "Привет, мир", "Ωμέγα", "עברית", "!!!???...", "<|endoftext",
    "x<|endoftext|>y", "<|endoftext|><|endoftext|>", "\x00\x01\x7f control bytes", "\ufeffBOM", "\U0010ffff",
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_tricky_strings_round_trip_and_match_tiktoken(tok, ref, text):
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert ids == ref.encode_ordinary(text)


def random_texts(seed, count, max_len, alphabet=None):
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = rng.randint(0, max_len)
        if alphabet is None:  # any code point except the surrogates, which are not valid text
            points = (rng.randrange(0x110000) for _ in range(n))
            texts.append("".join(chr(c) for c in points if not 0xD800 <= c <= 0xDFFF))
        else:
            texts.append("".join(rng.choice(alphabet) for _ in range(n)))
    return texts


def test_random_unicode_round_trips_and_matches_tiktoken(tok, ref):
    for text in random_texts(seed=0, count=500, max_len=60):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert ids == ref.encode_ordinary(text), repr(text)


def test_random_mixes_of_tricky_characters_match_tiktoken(tok, ref):
    alphabet = list("aZé ß\t\n\r  \u00a0\u2003'’0123456789.,!?-ñ中文字Ωж\u0301\u200d") + ["😀", "👍🏽", "'s", "'ll"]
    for text in random_texts(seed=1, count=2000, max_len=30, alphabet=alphabet):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert ids == ref.encode_ordinary(text), repr(text)


def test_decode_of_a_split_character_replaces_like_tiktoken(tok, ref):
    ids = tok.encode("🦙")
    assert len(ids) > 1
    for i in ids:
        assert tok.decode_bytes([i]) == ref.decode_single_token_bytes(i)
        assert tok.decode([i]) == ref.decode([i])


# --- <|endoftext|> and wrong inputs -----------------------------------------------------------

SPECIAL_TEXTS = [ENDOFTEXT, f"a{ENDOFTEXT}b", f"Hello. {ENDOFTEXT} World {ENDOFTEXT}{ENDOFTEXT}!",
                 f"{ENDOFTEXT}\n\n{ENDOFTEXT} end"]


@pytest.mark.parametrize("text", SPECIAL_TEXTS)
def test_endoftext_allowed_matches_tiktoken(tok, ref, text):
    allowed = {ENDOFTEXT}
    ids = tok.encode(text, allowed_special=allowed)
    assert ids == ref.encode(text, allowed_special=allowed)
    assert ids == tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    assert ids.count(50256) == text.count(ENDOFTEXT)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", SPECIAL_TEXTS)
def test_endoftext_not_allowed_is_an_error_like_tiktoken(tok, ref, text):
    with pytest.raises(ValueError):
        ref.encode(text)
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode(text)
    assert tok.encode_ordinary(text) == ref.encode_ordinary(text)
    assert 50256 not in tok.encode_ordinary(text)


def test_endoftext_has_id_50256(tok):
    assert tok.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [50256]
    assert tok.decode([50256]) == ENDOFTEXT
    assert tok.n_vocab == 50257


@pytest.mark.parametrize("bad", [b"bytes", None, 42, ["a list"]])
def test_non_str_input_is_a_clear_type_error(tok, bad):
    with pytest.raises(TypeError, match="encode takes a str"):
        tok.encode(bad)
    with pytest.raises(TypeError, match="encode takes a str"):
        tok.encode_ordinary(bad)


def test_unknown_special_token_and_bad_id_are_clear_errors(tok):
    with pytest.raises(ValueError, match="not special tokens of GPT-2"):
        tok.encode("hi", allowed_special={"<|im_start|>"})
    with pytest.raises(ValueError, match="not a GPT-2 token id: 50257"):
        tok.decode([31373, 50257])


# --- the pieces -------------------------------------------------------------------------------

def test_files_and_byte_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[ord("A")] == "A"
    encoder = load_encoder(helpers.get_data_file("encoder.json"))
    merges = load_merges(helpers.get_data_file("vocab.bpe"))
    assert len(encoder) == 50257 and len(merges) == 50000
    assert all(len(pair) == 2 for pair in merges)
    assert all(a + b in encoder for a, b in merges)  # every merge's result is a token
    assert all(c in encoder for c in table.values())  # and so is every byte


def test_pattern_splits_losslessly():
    text = "Hello world's  123 tokens!!  \n  I'll  "
    pieces = regex.findall(GPT2_PATTERN, text)
    assert "".join(pieces) == text
    assert pieces == ["Hello", " world", "'s", " ", " 123", " tokens", "!!", "  \n ", " I", "'ll", "  "]


def test_tiny_trainer_on_a_known_example():
    # Wikipedia's BPE example. 'aa' occurs 4 times (overlapping) and merges twice; then
    # ('aa', 'a') and ('a', 'b') tie at 2 and the pair seen first wins, then ('aaa', 'b').
    merges, vocab, history = train_bpe("aaabdaaabac", 3)
    assert list(merges) == [(97, 97), (256, 97), (257, 98)]
    assert [vocab[i] for i in merges.values()] == [b"aa", b"aaa", b"aaab"]
    assert history == [11, 9, 7, 5]
    ids = tiny_encode("aaabdaaabac", merges)
    assert len(ids) == history[-1] and b"".join(vocab[i] for i in ids) == b"aaabdaaabac"


def test_tiny_trainer_round_trips_new_text():
    merges, vocab, history = train_bpe(read("the-verdict.txt")[:3000], 40)
    assert len(merges) == 40 and history == sorted(history, reverse=True)
    text = "A sentence the story never had: naïve 😀!"
    assert b"".join(vocab[i] for i in tiny_encode(text, merges)).decode("utf-8") == text


# --- the generated module ---------------------------------------------------------------------

def test_generated_module_is_up_to_date():
    name, blocks = export.module_of(NOTEBOOK)
    assert name == "ch1b_tokenizer"
    assert MODULE.read_text(encoding="utf-8") == export.render(NOTEBOOK, blocks), \
        "course/ch1b_tokenizer.py is out of date: run `python -m course.export`"


def test_exported_cells_hold_only_definitions():
    """Imports (standard library and regex only), functions, classes and UPPER_CASE constants."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert all(m.split(".")[0] not in {"helpers", "tiktoken", "torch", "course"} for m in modules)
        elif isinstance(node, ast.Assign):
            assert all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets), ast.unparse(node)
        else:
            assert isinstance(node, (ast.FunctionDef, ast.ClassDef)), ast.unparse(node)[:80]
