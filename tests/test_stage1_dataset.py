"""Stage 1: sliding-window dataset and loader, checked on known tokens and bad input."""
import pytest
import tiktoken
import torch

from helpers import GPTDatasetV1, create_dataloader_v1


class CountingTokenizer:
    """Maps a text of space-separated integers to those integers: a token list we control."""

    def encode(self, text, allowed_special=()):
        return [int(t) for t in text.split()]


def text_of(n):
    return " ".join(str(i) for i in range(n))


@pytest.mark.parametrize("n,max_length,stride,expected", [
    (10, 4, 1, 6),   # starts 0..5
    (10, 4, 2, 3),   # starts 0, 2, 4
    (10, 4, 4, 2),   # starts 0, 4 (start 8 lacks a target for its last token)
    (10, 4, 5, 2),   # starts 0, 5
    (5, 4, 1, 1),    # exactly one window: 4 inputs + 1 target
])
def test_window_count(n, max_length, stride, expected):
    ds = GPTDatasetV1(text_of(n), CountingTokenizer(), max_length, stride)
    assert len(ds) == expected
    # the closed form a learner can predict: floor((n - max_length - 1) / stride) + 1
    assert len(ds) == (n - max_length - 1) // stride + 1


def test_window_contents_and_shifted_targets():
    ds = GPTDatasetV1(text_of(10), CountingTokenizer(), max_length=4, stride=2)
    expected_inputs = [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]
    for i, inputs in enumerate(expected_inputs):
        x, y = ds[i]
        assert x.tolist() == inputs
        assert y.tolist() == [t + 1 for t in inputs]
        assert x.dtype == torch.long


def test_gpt2_token_ids_of_a_known_sentence():
    """Reference ids from OpenAI's GPT-2 encoder (also listed in tiktoken's own tests)."""
    enc = tiktoken.get_encoding("gpt2")
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("Hello, do you like tea? <|endoftext|> In the sunlit terraces",
                      allowed_special={"<|endoftext|>"}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114]
    assert enc.n_vocab == 50257


def test_dataloader_batches_shapes():
    torch.manual_seed(123)
    loader = create_dataloader_v1(" ".join(["word"] * 100), batch_size=4, max_length=8, stride=8, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("kwargs,match", [
    ({"max_length": 0, "stride": 1}, "max_length must be at least 1"),
    ({"max_length": 4, "stride": 0}, "stride must be at least 1"),
    ({"max_length": 4, "stride": -2}, "stride must be at least 1"),
    ({"max_length": 10, "stride": 1}, "has 5 tokens, but one window needs"),
])
def test_dataset_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTDatasetV1(text_of(5), CountingTokenizer(), **kwargs)


def test_loader_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        create_dataloader_v1("some text " * 50, batch_size=0, max_length=4, stride=4)


def test_loader_that_would_be_empty_is_an_error():
    with pytest.raises(ValueError, match="loader would be empty"):
        create_dataloader_v1("one two three four five six", batch_size=8, max_length=2, stride=2)


def test_text_shorter_than_one_window_through_the_loader():
    with pytest.raises(ValueError, match="one window needs"):
        create_dataloader_v1("too short", batch_size=1, max_length=256, stride=128)
