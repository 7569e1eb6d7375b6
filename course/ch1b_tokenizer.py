# Generated from notebooks/LLM-bpe-from-scratch.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 5
import json
import os

import regex


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 10
def pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair (a, b) occurs in the list of token ids."""
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 13
def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """ids with every non-overlapping occurrence of pair, left to right, replaced by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 16
def train_bpe(text: str, num_merges: int) -> tuple[dict[tuple[int, int], int], dict[int, bytes], list[int]]:
    """Learn num_merges merges from text's UTF-8 bytes.

    Returns (merges, vocab, history): merges maps each merged pair to its new id (256, 257, ...,
    in the order learned), vocab maps every id to its bytes, and history[k] is the number of
    tokens of text after k merges. Ties between equally frequent pairs go to the pair seen first.
    """
    ids = list(text.encode("utf-8"))
    merges, vocab, history = {}, {i: bytes([i]) for i in range(256)}, [len(ids)]
    for new_id in range(256, 256 + num_merges):
        counts = pair_counts(ids)
        if not counts:
            break  # the whole text is one token: nothing left to merge
        pair = max(counts, key=counts.get)
        ids = merge_pair(ids, pair, new_id)
        merges[pair] = new_id
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        history.append(len(ids))
    return merges, vocab, history


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 26
def tiny_encode(text: str, merges: dict[tuple[int, int], int]) -> list[int]:
    """Encode text with merges learned by train_bpe: replay them, the earliest learned first."""
    ids = list(text.encode("utf-8"))
    while len(ids) > 1:
        pair = min(pair_counts(ids), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break  # no adjacent pair was ever merged: done
        ids = merge_pair(ids, pair, merges[pair])
    return ids


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 30
def load_encoder(path: str | os.PathLike) -> dict[str, int]:
    """encoder.json: token string (in bytes_to_unicode characters) -> id, 50,257 entries."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """vocab.bpe: the 50,000 merges in the order they were learned, as (left, right) pairs."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 34
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each of the 256 byte values to a printable Unicode character.

    Bytes that are already printable, non-space characters (! to ~, and most of Latin-1) map to
    themselves; the other 68 (control characters, space, the rest) map to the characters 256,
    257, ... in order, so space (byte 32) becomes 'Ġ' and newline (byte 10) becomes 'Ċ'.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 38
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 42
def bpe_merge(word: str, ranks: dict[tuple[str, str], int], steps: list | None = None) -> list[str]:
    """Split word (a string of bytes_to_unicode characters) into GPT-2's BPE tokens.

    Starts from single characters and repeatedly merges the adjacent pair with the lowest rank
    (the earliest learned merge), everywhere it occurs, until no adjacent pair is a merge.
    Pass a list as steps to collect the parts after each merge.
    """
    parts = list(word)
    while len(parts) > 1:
        pairs = set(zip(parts, parts[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
        if steps is not None:
            steps.append(parts)
    return parts


# %% notebooks/LLM-bpe-from-scratch.ipynb, cell 46
class GPT2Tokenizer:
    """GPT-2's byte-level BPE, from its two published files' contents.

    encoder: the parsed encoder.json (token string -> id); merges: the (left, right) pairs of
    vocab.bpe in order. encode() gives the same ids as tiktoken.get_encoding("gpt2").
    """

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = dict(encoder)
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.special_tokens = {ENDOFTEXT: self.encoder[ENDOFTEXT]}
        self.cache = {}  # pre-token (as bytes_to_unicode characters) -> its ids

    @classmethod
    def from_files(cls, encoder_json_path: str | os.PathLike,
                   vocab_bpe_path: str | os.PathLike) -> "GPT2Tokenizer":
        return cls(load_encoder(encoder_json_path), load_merges(vocab_bpe_path))

    @property
    def n_vocab(self) -> int:
        return len(self.encoder)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids; special tokens in the text are encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}; "
                            f"decode bytes first, e.g. data.decode('utf-8')")
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            if word not in self.cache:
                self.cache[word] = [self.encoder[token] for token in bpe_merge(word, self.ranks)]
            ids.extend(self.cache[word])
        return ids

    def encode(self, text: str, allowed_special: str | set[str] | frozenset[str] = frozenset()) -> list[int]:
        """Text -> ids. A special token in the text is an error unless allowed_special names it
        (or is "all"), as in tiktoken: user text must not smuggle in control tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}; "
                            f"decode bytes first, e.g. data.decode('utf-8')")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"not special tokens of GPT-2: {sorted(unknown)}; "
                             f"it has only {sorted(self.special_tokens)}")
        for special in set(self.special_tokens) - allowed:
            if special in text:
                raise ValueError(
                    f"the text contains the special token {special!r}. Pass "
                    f"allowed_special={{{special!r}}} to encode it as the special token, or use "
                    f"encode_ordinary() to encode it as ordinary text.")
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        splitter = "(" + "|".join(regex.escape(s) for s in sorted(allowed)) + ")"
        for i, chunk in enumerate(regex.split(splitter, text)):
            if i % 2:  # the odd chunks are the special tokens themselves
                ids.append(self.special_tokens[chunk])
            elif chunk:
                ids.extend(self.encode_ordinary(chunk))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        """ids -> the bytes they stand for."""
        try:
            return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])
        except KeyError as err:
            raise ValueError(f"not a GPT-2 token id: {err.args[0]!r} "
                             f"(ids run from 0 to {self.n_vocab - 1})") from None

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        """ids -> text. A token may hold part of a multi-byte character, so a slice of ids may
        not be valid UTF-8: errors="replace" (tiktoken's default) shows such bytes as '\ufffd'."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)
