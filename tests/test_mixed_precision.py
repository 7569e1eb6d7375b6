"""Chapter 4b's mixed-precision switch.

Off (the default), this chapter's train_model_simple is chapter 4's loop bit for bit. On, the
matrix products run in bfloat16 while the weights, gradients, optimizer state and loss stay in
float32, and the losses track float32's. "auto" turns it on only where the hardware multiplies
bfloat16 natively: the detection is monkeypatched here, so every case runs on every CPU.
"""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import course.ch4_training as ch4
from helpers import GPTModel, MixedPrecisionModel, has_native_bf16, make_adamw, train_model_simple, use_bf16

TINY = {"vocab_size": 60, "context_length": 8, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
        "drop_rate": 0.1, "qkv_bias": False}
CPU_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


class Tok:
    def encode(self, text, allowed_special=()):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def loaders():
    ids = torch.randint(0, TINY["vocab_size"], (12, 9), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(ids[:, :-1], ids[:, 1:])
    return DataLoader(data, batch_size=3, shuffle=False), DataLoader(data, batch_size=4, shuffle=False)


def train(train_fn, capsys=None, drop_rate=0.1, **switch):
    """(train losses, val losses, final weights) of 3 epochs of 4 steps from the same start."""
    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": drop_rate})
    optimizer = make_adamw(model.parameters(), lr=3e-3, weight_decay=0.1)
    train_loader, val_loader = loaders()
    train_losses, val_losses, _ = train_fn(model, train_loader, val_loader, optimizer, "cpu", 3, 2, 2,
                                           "1 2", Tok(), **switch)
    if capsys is not None:
        capsys.readouterr()
    return train_losses, val_losses, {k: v.clone() for k, v in model.state_dict().items()}


def assert_identical(a, b):
    assert a[0] == b[0] and a[1] == b[1]  # every printed loss, exactly
    assert a[2].keys() == b[2].keys() and all(torch.equal(a[2][k], b[2][k]) for k in a[2])


def no_native_bf16(monkeypatch):
    for check in CPU_CHECKS:
        monkeypatch.setattr(torch.cpu, check, lambda: False)


def test_switch_off_is_chapter_4s_loop_bit_for_bit(capsys):
    reference = train(ch4.train_model_simple, capsys)  # chapter 4's loop, untouched
    assert_identical(train(train_model_simple, capsys), reference)  # the default
    assert_identical(train(train_model_simple, capsys, bf16=False), reference)


def test_switch_on_trains_in_bfloat16_and_tracks_float32(capsys):
    fp32 = train(train_model_simple, capsys, drop_rate=0.0)
    bf16 = train(train_model_simple, capsys, drop_rate=0.0, bf16=True)
    assert all(math.isfinite(v) for v in bf16[0] + bf16[1])
    assert bf16[0] != fp32[0]  # the switch did something: bfloat16 rounding shows in the losses
    gaps = [abs(a - b) for a, b in zip(bf16[0] + bf16[1], fp32[0] + fp32[1])]
    assert max(gaps) < 0.05, gaps
    assert fp32[0][-1] < fp32[0][0] - 0.5 and bf16[0][-1] < bf16[0][0] - 0.5  # both learned
    assert all(w.dtype == torch.float32 for w in bf16[2].values())  # master weights stay float32


def test_mixed_precision_model_rounds_only_the_products():
    torch.manual_seed(0)
    model = GPTModel({**TINY, "drop_rate": 0.0})
    wrapped = MixedPrecisionModel(model, "cpu")
    seen = {}
    model.trf_blocks[0].att.W_query.register_forward_hook(lambda m, a, out: seen.update(linear=out.dtype))
    model.trf_blocks[0].norm1.register_forward_hook(lambda m, a, out: seen.update(norm=(a[0].dtype, out.dtype)))
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(1))
    logits = wrapped(ids)
    assert seen == {"linear": torch.bfloat16, "norm": (torch.float32, torch.float32)}
    assert logits.dtype == torch.float32 and wrapped.context_length == TINY["context_length"]
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():  # close to the float32 logits, not equal
        full = model(ids)
    assert not torch.equal(logits, full)
    torch.testing.assert_close(logits, full, atol=0.1, rtol=0.05)


def test_auto_never_turns_on_without_native_bfloat16(monkeypatch, capsys):
    no_native_bf16(monkeypatch)
    assert has_native_bf16("cpu") is False and use_bf16("auto", "cpu") is False
    # and the loop really stays in float32: chapter 4's results, bit for bit
    assert_identical(train(train_model_simple, capsys, bf16="auto"), train(ch4.train_model_simple, capsys))


@pytest.mark.parametrize("native", CPU_CHECKS)
def test_auto_turns_on_with_either_instruction_set(monkeypatch, native):
    no_native_bf16(monkeypatch)
    monkeypatch.setattr(torch.cpu, native, lambda: True)
    assert has_native_bf16("cpu") is True and use_bf16("auto", torch.device("cpu")) is True


def test_a_pytorch_without_the_cpu_checks_means_no(monkeypatch):
    for check in CPU_CHECKS:
        monkeypatch.delattr(torch.cpu, check, raising=False)
    assert has_native_bf16("cpu") is False


def test_cuda_asks_for_native_support_not_emulation(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert has_native_bf16("cuda") is False  # a GPU that only emulates bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert has_native_bf16(torch.device("cuda", 0)) is True
    assert has_native_bf16("meta") is False and has_native_bf16("mps") is False


def test_forcing_it_on_works_anywhere_and_bad_values_are_refused(monkeypatch):
    no_native_bf16(monkeypatch)
    assert use_bf16(True, "cpu") is True and use_bf16(False, "cpu") is False
    with pytest.raises(ValueError, match='bf16 must be False, True or "auto"'):
        use_bf16("yes", "cpu")
    with pytest.raises(ValueError, match="got 1"):
        train(train_model_simple, bf16=1)
