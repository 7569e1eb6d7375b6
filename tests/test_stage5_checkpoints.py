"""Stage 5: checkpoints that resume exactly, fail loudly, and survive a crash mid-save."""
import pickle
import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import helpers
from helpers import CheckpointError, GPTModel, load_checkpoint, save_checkpoint

CFG = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.1, "qkv_bias": False}  # dropout on: resuming must also restore the RNG


def make_loader():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CFG["vocab_size"], (24, CFG["context_length"] + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=4, shuffle=True)


def make_model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = GPTModel(CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, optimizer


def train_epochs(model, optimizer, loader, epochs):
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:  # shuffled: the order comes from torch's global RNG
            optimizer.zero_grad()
            helpers.calc_loss_batch(inputs, targets, model, "cpu").backward()
            optimizer.step()


def run_resumed(tmp_path, restore_rng=True, restore_optimizer=True):
    loader = make_loader()
    model, optimizer = make_model_and_optimizer(seed=1)
    train_epochs(model, optimizer, loader, 1)
    save_checkpoint(tmp_path / "ckpt.pt", model, optimizer, config=CFG, step=len(loader))
    torch.manual_seed(999)  # whatever happened in between (another process, another seed)...
    fresh_model, fresh_optimizer = make_model_and_optimizer(seed=2)
    load_checkpoint(tmp_path / "ckpt.pt", fresh_model, fresh_optimizer if restore_optimizer else None,
                    restore_rng=restore_rng)
    train_epochs(fresh_model, fresh_optimizer, loader, 1)
    return fresh_model, fresh_optimizer


def run_straight():
    loader = make_loader()
    model, optimizer = make_model_and_optimizer(seed=1)
    train_epochs(model, optimizer, loader, 2)
    return model, optimizer


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_equals_uninterrupted_training(tmp_path):
    straight_model, straight_opt = run_straight()
    resumed_model, resumed_opt = run_resumed(tmp_path)
    assert same_weights(straight_model, resumed_model)
    for p_straight, p_resumed in zip(straight_model.parameters(), resumed_model.parameters()):
        s1, s2 = straight_opt.state[p_straight], resumed_opt.state[p_resumed]
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
        assert s1["step"] == s2["step"]


@pytest.mark.parametrize("what", ["rng", "optimizer"])
def test_resume_without_rng_or_optimizer_state_differs(tmp_path, what):
    """The control: the exact match above is not an accident of the setup."""
    straight_model, _ = run_straight()
    resumed_model, _ = run_resumed(tmp_path, restore_rng=what != "rng",
                                   restore_optimizer=what != "optimizer")
    assert not same_weights(straight_model, resumed_model)


def test_checkpoint_round_trip_keeps_config_step_and_extras(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=3)
    save_checkpoint(tmp_path / "sub" / "c.pt", model, optimizer, config=CFG, step=7,
                    train_losses=[3.5, 2.25], note="after warmup")
    other, other_opt = make_model_and_optimizer(seed=4)
    state = load_checkpoint(tmp_path / "sub" / "c.pt", other, other_opt)
    assert same_weights(model, other)
    assert state["config"] == CFG and state["step"] == 7
    assert state["train_losses"] == [3.5, 2.25] and state["note"] == "after warmup"


def test_a_checkpoint_from_another_config_names_the_mismatch(tmp_path):
    model, _ = make_model_and_optimizer(seed=0)
    save_checkpoint(tmp_path / "small.pt", model, config=CFG)
    bigger = GPTModel({**CFG, "emb_dim": 48, "n_layers": 3})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "small.pt", bigger)
    message = str(info.value)
    assert "tok_emb.weight: checkpoint (97, 32) vs model (97, 48)" in message
    assert "missing keys" in message and "trf_blocks.2.att.W_query.weight" in message
    assert "config" in message


def test_loading_optimizer_state_that_was_not_saved_says_so(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    save_checkpoint(tmp_path / "weights-only.pt", model)
    with pytest.raises(CheckpointError, match="without optimizer state"):
        load_checkpoint(tmp_path / "weights-only.pt", model, optimizer)


def test_extra_entries_cannot_overwrite_the_checkpoint_fields(tmp_path):
    model, _ = make_model_and_optimizer(seed=0)
    with pytest.raises(ValueError, match="rng_state"):
        save_checkpoint(tmp_path / "c.pt", model, rng_state="oops")


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer, config=CFG, step=1)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, optimizer, config=CFG, step=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    restored, _ = make_model_and_optimizer(seed=5)
    state = load_checkpoint(path, restored)
    assert state["step"] == 1
    assert not same_weights(restored, model)  # the half-written step-2 state never landed


def test_an_unpicklable_extra_fails_without_touching_the_old_file(tmp_path):
    model, _ = make_model_and_optimizer(seed=0)
    save_checkpoint(tmp_path / "ckpt.pt", model, step=1)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be pickled
        save_checkpoint(tmp_path / "ckpt.pt", model, step=2, callback=lambda: None)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 1


@pytest.fixture
def saved(tmp_path):
    model, optimizer = make_model_and_optimizer(seed=0)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, optimizer, config=CFG, step=3)
    return path


def test_a_truncated_checkpoint_gives_a_clear_error(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint .truncated or damaged"):
        load_checkpoint(saved, GPTModel(CFG))


def test_a_corrupted_byte_in_the_weights_is_caught(saved):
    """torch.load itself would return the damaged tensor silently; the CRC-32 check does not."""
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged: its part .* fails its CRC-32 check"):
        load_checkpoint(saved, GPTModel(CFG))


def test_a_file_that_is_no_checkpoint_at_all(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_bare_state_dict_is_not_mistaken_for_a_checkpoint(tmp_path):
    model, _ = make_model_and_optimizer(seed=0)
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "bare.pth", model)


RAN = []


def mark_as_run():
    RAN.append("code ran")


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return mark_as_run, ()


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    torch.save({"model": {}, "payload": RunsCodeWhenUnpickled()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only=True refuses"):
        load_checkpoint(tmp_path / "evil.pt")
    assert RAN == []
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the danger is real: this runs it
    assert RAN == ["code ran"]


def test_chapter_5_loads_the_file_chapter_4_saves(tmp_path):
    """Chapter 4's save cell, run on a tiny model, writes a file that chapter 5's load_checkpoint
    restores exactly (weights and AdamW state), at the path chapter 5 looks for."""
    from notebook_tools import ROOT, cell_source, code_cells
    from helpers import atomic_write, display_path

    chapter4 = [cell_source(c) for c in code_cells(ROOT / "training" / "LLM-training.ipynb")]
    save_cell = next(s for s in chapter4 if s.startswith('checkpoint_path = ROOT / "checkpoints"'))
    chapter5 = [cell_source(c) for c in code_cells(ROOT / "post_training" / "LLM-saving-loading.ipynb")]
    assert any('ROOT / "checkpoints" / "ch4-gpt-small.pt"' in s for s in chapter5)

    model, optimizer = make_model_and_optimizer(seed=1)
    train_epochs(model, optimizer, make_loader(), 1)
    namespace = {"ROOT": tmp_path, "USE_124M": False, "model": model, "optimizer": optimizer, "cfg": CFG,
                 "plain": {"loss": [1.0] * 6}, "train_losses": [2.0], "val_losses": [3.0], "tokens_seen": [4],
                 "atomic_write": atomic_write, "display_path": display_path, "torch": torch}
    exec(save_cell, namespace)
    path = tmp_path / "checkpoints" / "ch4-gpt-small.pt"
    assert namespace["checkpoint_path"] == path and path.is_file()

    fresh_model, fresh_optimizer = make_model_and_optimizer(seed=2)
    state = load_checkpoint(path, fresh_model, fresh_optimizer)
    assert same_weights(model, fresh_model) and state["step"] == 6 and state["config"] == CFG
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert all(torch.equal(saved[k]["exp_avg_sq"], restored[k]["exp_avg_sq"]) for k in saved)
