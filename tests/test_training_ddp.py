"""training/train_ddp.py: chapter 4's loop under torchrun and DistributedDataParallel, on CPU (gloo).

Two ranks must end with identical weights, equal (within float tolerance) to one process that
trains on the same global batches: DDP averages the ranks' gradients, and with equal per-rank
batches that average is the gradient of the mean loss over the whole global batch. A launch that
leaves a rank without a batch must fail at once with a message that says what to change.
"""
import importlib.util
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from helpers import DDPModel, GPTModel, ReshufflingSampler, load_checkpoint, train_model_simple
from notebook_tools import ROOT

SCRIPT = ROOT / "training" / "train_ddp.py"
TINY_ARGS = ["--epochs", "1", "--context-length", "32", "--emb-dim", "16", "--n-heads", "2",
             "--n-layers", "1", "--drop-rate", "0", "--eval-freq", "100", "--eval-iter", "1"]
TIMEOUT_S = 120  # a hung collective fails the test instead of blocking it

_spec = importlib.util.spec_from_file_location("train_ddp", SCRIPT)
train_ddp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_ddp)


def run(args):
    """Run a command with its own process group, so a timeout kills torchrun's workers too."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: two ranks share the cores
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(map(str, args[1:]))} still ran after {TIMEOUT_S} s: a hang")
    return proc.returncode, output


def torchrun(nproc, *args):
    return run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", str(SCRIPT), *args])


def final_weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
def test_two_ranks_agree_with_each_other_and_with_one_process(tmp_path, capsys):
    code, log = torchrun(2, *TINY_ARGS, "--batch-size", "8", "--out", str(tmp_path / "ddp.pt"),
                         "--save-rank-states", str(tmp_path / "ddp"))
    assert code == 0, log
    # The reference: one process, the script's main() called here, without torchrun (so no process
    # group, no DDP), which saves starting a third Python.
    train_ddp.main([*TINY_ARGS, "--batch-size", "16", "--out", str(tmp_path / "single.pt")])
    single_log = capsys.readouterr().out

    rank0, rank1 = final_weights(tmp_path / "ddp" / "rank0.pt"), final_weights(tmp_path / "ddp" / "rank1.pt")
    single = final_weights(tmp_path / "single.pt")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:  # the same all-reduced gradients and the same AdamW step: bit for bit
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
    for name in rank0:  # the same global batches, summed in another order: float tolerance
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5, msg=name)

    # The comparison can fail: training moved the weights far beyond that tolerance.
    checkpoint = load_checkpoint(tmp_path / "ddp.pt")
    torch.manual_seed(123)  # --seed's default seeds the initial weights
    initial = GPTModel(checkpoint["config"]).state_dict()
    assert max((rank0[k] - initial[k]).abs().max().item() for k in rank0) > 1e-3
    assert all(torch.equal(checkpoint["model"][k], rank0[k]) for k in rank0)
    assert checkpoint["world_size"] == 2 and checkpoint["step"] > 1
    assert "optimizer" in checkpoint

    # Only rank 0 evaluates and prints; one step learns from 2 x 8 = 16 sequences, like one process.
    assert log.count("Ep 1 (step 000000)") == 1
    assert log.count("Every effort moves you") == 1
    assert "2 process(es) on cpu x batch 8 = 16 sequences per step" in log
    steps = checkpoint["step"]
    assert f"x batch 16 = 16 sequences per step, {steps} steps per epoch" in single_log


@pytest.mark.slow
def test_more_ranks_than_batches_fails_fast_with_a_clear_message(tmp_path):
    # ~140 training windows of 32 tokens: one batch of 100 for one process, none for each of two
    code, log = torchrun(2, *TINY_ARGS, "--batch-size", "100", "--out", str(tmp_path / "never.pt"))
    assert code != 0
    assert "With 2 processes each one gets" in log and "fewer than --batch-size 100" in log
    assert "Start fewer processes (torchrun --nproc_per_node)" in log
    assert not (tmp_path / "never.pt").exists()


@pytest.fixture
def one_rank_group():
    """A real gloo process group of one rank, inside this process."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Tok:
    def encode(self, text, allowed_special=()):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


class RecordingSampler(ReshufflingSampler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def tiny_loader():
    seq = torch.arange(4 * 9).view(4, 9) % 50
    dataset = TensorDataset(seq[:, :-1], seq[:, 1:])
    sampler = RecordingSampler(dataset, num_replicas=1, rank=0, seed=0)
    return DataLoader(dataset, batch_size=2, sampler=sampler)


def tiny_ddp_model():
    torch.manual_seed(0)
    cfg = {"vocab_size": 50, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    return DDPModel(GPTModel(cfg))


def test_chapter_4s_loop_runs_unchanged_through_ddp_and_reshuffles_each_epoch(one_rank_group, capsys):
    model, loader = tiny_ddp_model(), tiny_loader()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_losses, _, _ = train_model_simple(model, loader, loader, optimizer, torch.device("cpu"),
                                            num_epochs=3, eval_freq=1, eval_iter=1,
                                            start_context="1 2", tokenizer=Tok())
    # a new epoch after each of the 3 full passes; the evaluations read 1 of 2 batches and do not count
    assert loader.sampler.epochs == [1, 2, 3]
    assert len(train_losses) == 6  # 3 epochs x 2 batches, evaluated after every step
    assert capsys.readouterr().out.count("\n1 2 ") == 3  # a sample per epoch, through the wrapper
    assert model.context_length == 8  # DDPModel passes the wrapped model's attributes on
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_a_reshuffling_sampler_equals_set_epoch_by_hand():
    by_hand = DistributedSampler(list(range(10)), num_replicas=2, rank=1, seed=123, drop_last=True)
    auto = ReshufflingSampler(list(range(10)), num_replicas=2, rank=1, seed=123, drop_last=True)
    for epoch in range(3):
        by_hand.set_epoch(epoch)
        assert list(auto) == list(by_hand)
    assert auto.epoch == 3


def test_other_ranks_print_nothing(capsys):
    with train_ddp.quiet_unless(False):
        print("rank 1's log")
    with train_ddp.quiet_unless(True):
        print("rank 0's log")
    assert capsys.readouterr().out == "rank 0's log\n"


def test_bad_arguments_name_the_flag(capsys):
    with pytest.raises(SystemExit):
        train_ddp.parse_args(["--batch-size", "0"])
    assert "--batch-size must be at least 1 (got 0)" in capsys.readouterr().err


def run_in_process(tmp_path, name, *args):
    train_ddp.main([*TINY_ARGS, "--batch-size", "16", "--eval-freq", "4", "--out", str(tmp_path / f"{name}.pt"), *args])
    return load_checkpoint(tmp_path / f"{name}.pt")


@pytest.mark.slow  # two trainings of the script on The Verdict
def test_the_bf16_flag_is_chapter_4bs_switch(tmp_path, monkeypatch, capsys):
    assert train_ddp.parse_args([]).bf16 == "off"
    off = run_in_process(tmp_path, "off")
    assert "--bf16" not in capsys.readouterr().out  # off: the log of before
    on = run_in_process(tmp_path, "on", "--bf16", "on")
    assert "--bf16 on: matrix products in bfloat16" in capsys.readouterr().out
    gaps = [abs(a - b) for a, b in zip(on["train_losses"] + on["val_losses"], off["train_losses"] + off["val_losses"])]
    assert len(gaps) > 2 and max(gaps) < 0.05 and on["train_losses"] != off["train_losses"]
    # auto hands "auto" to train_model_simple (tests/test_mixed_precision.py checks that it stays
    # float32 without native bfloat16) and says which it is
    for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):  # a CPU without native bfloat16
        monkeypatch.setattr(torch.cpu, check, lambda: False)
    switches = []
    monkeypatch.setattr(train_ddp, "train_model_simple",
                        lambda *args, bf16, **kwargs: switches.append(bf16) or ([], [], []))
    run_in_process(tmp_path, "auto", "--bf16", "auto")
    assert switches == ["auto"]
    assert "--bf16 auto: matrix products in float32 (no native bfloat16 on this cpu)" in capsys.readouterr().out


def test_mixed_precision_runs_through_ddp(one_rank_group, capsys):
    losses = {}
    for bf16 in (False, True):
        model, loader = tiny_ddp_model(), tiny_loader()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[bf16], _, _ = train_model_simple(model, loader, loader, optimizer, torch.device("cpu"),
                                                num_epochs=2, eval_freq=1, eval_iter=1,
                                                start_context="1 2", tokenizer=Tok(), bf16=bf16)
    assert capsys.readouterr().out.count("\n1 2 ") == 4  # the samples, through both wrappers
    assert losses[True] != losses[False]
    assert max(abs(a - b) for a, b in zip(losses[True], losses[False])) < 0.05


def documented_launches():
    """Every torchrun command line in the chapter's notebook and in training/README.md."""
    import json
    import re
    import shlex

    texts = ["".join(cell["source"]) for cell in json.loads(
        (ROOT / "training" / "LLM-distributed.ipynb").read_text(encoding="utf-8"))["cells"]]
    texts.append((ROOT / "training" / "README.md").read_text(encoding="utf-8"))
    commands = []
    for text in texts:
        for command in re.findall(r"torchrun [^\n]*(?:\\\n[^\n]*)*", text.replace("\\\n", " ")):
            command = command.split("#")[0]
            if "train_ddp.py" in command:
                commands.append(shlex.split(command))
    return commands


def test_every_documented_launch_trains_several_steps_per_epoch():
    """The torchrun lines the chapter shows (several GPUs, two machines) must work on The Verdict:
    every rank gets batches, and an epoch is more than one step."""
    from helpers import get_data_file

    text = get_data_file("the-verdict.txt").read_text(encoding="utf-8")
    commands = documented_launches()
    assert len(commands) >= 5, commands
    for argv in commands:
        flags = dict(zip(argv, argv[1:]))
        world_size = int(flags.get("--nnodes", 1)) * int(flags["--nproc_per_node"])
        script_args = train_ddp.parse_args(argv[argv.index(next(a for a in argv if a.endswith("train_ddp.py"))) + 1:])
        loader = train_ddp.make_loaders(text, script_args.context_length, script_args.batch_size, 0,
                                        world_size, script_args.seed)[0]
        assert len(loader) >= 2, f"{' '.join(argv)}: {len(loader)} step per epoch"
