# Generated from notebooks/LLM-data-preprocessing.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% notebooks/LLM-data-preprocessing.ipynb, cell 5
import tiktoken
import torch
from torch.utils.data import DataLoader, Dataset


# %% notebooks/LLM-data-preprocessing.ipynb, cell 21
END_OF_TEXT_ID = 50256  # GPT-2's <|endoftext|> token


# %% notebooks/LLM-data-preprocessing.ipynb, cell 36
class GPTDatasetV1(Dataset):
    """Sliding windows over a tokenized text: each input is max_length tokens and its target
    is the same window shifted one token to the right (the next token at every position)."""

    def __init__(self, txt: str, tokenizer: tiktoken.Encoding, max_length: int, stride: int):
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1 token (got {max_length}).")
        if stride < 1:
            raise ValueError(f"stride must be at least 1 token (got {stride}); stride = max_length "
                             f"gives windows that touch without overlapping.")
        token_ids = tokenizer.encode(txt, allowed_special={"<|endoftext|>"})
        if len(token_ids) < max_length + 1:
            raise ValueError(
                f"The text has {len(token_ids)} tokens, but one window needs max_length + 1 = "
                f"{max_length + 1} (the inputs plus the next token as target). Use a longer text "
                f"or a smaller max_length.")
        self.input_ids, self.target_ids = [], []
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i:i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[idx], self.target_ids[idx]


# %% notebooks/LLM-data-preprocessing.ipynb, cell 45
def create_dataloader_v1(txt: str, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                         shuffle: bool = True, drop_last: bool = True, num_workers: int = 0) -> DataLoader:
    """A DataLoader of (input_ids, target_ids) batches over `txt`, tokenized with GPT-2's BPE."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size}).")
    tokenizer = tiktoken.get_encoding("gpt2")
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"The text gives {len(dataset)} windows, fewer than batch_size={batch_size}, so with "
            f"drop_last=True the loader would be empty. Use a smaller batch_size or stride, a "
            f"longer text, or drop_last=False."
        )
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, num_workers=num_workers)
