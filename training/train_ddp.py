"""Chapter 4's training loop on several processes, with PyTorch's DistributedDataParallel (DDP).

    python training/train_ddp.py                                            # one process
    torchrun --standalone --nproc_per_node 2 training/train_ddp.py          # two, on this machine

Every process (a "rank") builds the same GPTModel and trains it on its own shard of the
training windows (a DistributedSampler). In backward(), DDP averages the gradients over all
ranks, so every copy takes the same optimizer step and the copies stay identical. One step thus
learns from world_size x --batch-size sequences. Every rank runs chapter 4's train_model_simple
unchanged (chapter 4c's ReshufflingSampler and DDPModel make that possible), through chapter 4b's
version with its mixed-precision switch (--bf16, off by default; --bf16 auto for a 124M-sized
run: bfloat16 products where the hardware has them natively); only rank 0 prints and saves the
checkpoint. training/LLM-distributed.ipynb explains each part and how to launch on several GPUs
or machines.
"""
import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import tiktoken
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this course's helpers.py
from helpers import (DATA_DIR, GPT_SMALL_CONFIG, DDPModel, GPTDatasetV1, GPTModel,  # noqa: E402
                     ReshufflingSampler, display_path, get_data_file, get_device,
                     prepare_tiktoken_offline, save_checkpoint, train_model_simple, use_bf16)


def parse_args(argv=None):
    small = GPT_SMALL_CONFIG
    p = argparse.ArgumentParser(
        description="Train the course's GPTModel on The Verdict, on one process or under torchrun.")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2,
                   help="sequences per step on EACH process; one step learns from batch size x processes")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=123, help="seeds the initial weights and the shuffle")
    p.add_argument("--context-length", type=int, default=small["context_length"],
                   help="tokens per training window")
    p.add_argument("--emb-dim", type=int, default=small["emb_dim"])
    p.add_argument("--n-heads", type=int, default=small["n_heads"])
    p.add_argument("--n-layers", type=int, default=small["n_layers"])
    p.add_argument("--drop-rate", type=float, default=small["drop_rate"])
    p.add_argument("--bf16", choices=["off", "on", "auto"], default="off",
                   help="mixed precision (chapter 4b): matrix products in bfloat16 under torch.autocast; "
                        "auto: only where the device has native bfloat16 (else float32)")
    p.add_argument("--eval-freq", type=int, default=5, help="evaluate every this many steps")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation")
    p.add_argument("--out", type=Path, default=DATA_DIR / "gpt-small-ddp.pt",
                   help="the checkpoint rank 0 writes (default: data/gpt-small-ddp.pt)")
    p.add_argument("--save-rank-states", type=Path, default=None, metavar="DIR",
                   help="for tests: every rank also saves its final model as DIR/rank<N>.pt")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "eval_freq", "eval_iter"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    return args


def setup_distributed():
    """(rank, world_size, device). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE for each
    process it starts; without them this is the only process."""
    if "RANK" not in os.environ:
        return 0, 1, get_device()
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)  # one GPU per process on each machine
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl")  # NVIDIA's fast GPU-to-GPU collectives
    else:
        device = torch.device("cpu")
        dist.init_process_group(backend="gloo")  # collectives between CPU processes
    return rank, world_size, device


def make_loaders(text, context_length, batch_size, rank, world_size, seed):
    """Chapter 4's 90/10 split into windows of context_length tokens; this rank's training shard."""
    tokenizer = tiktoken.get_encoding("gpt2")
    split_idx = int(0.90 * len(text))
    train_set = GPTDatasetV1(text[:split_idx], tokenizer, context_length, stride=context_length)
    val_set = GPTDatasetV1(text[split_idx:], tokenizer, context_length, stride=context_length)
    # One seeded shuffle of all windows, the same on every rank; rank r takes every
    # world_size-th window from position r. drop_last: no window is seen twice per epoch.
    # ReshufflingSampler moves on to the next epoch's shuffle after each full pass.
    sampler = ReshufflingSampler(train_set, num_replicas=world_size, rank=rank,
                                 shuffle=True, seed=seed, drop_last=True)
    if len(sampler) < batch_size:
        raise ValueError(
            f"With {world_size} processes each one gets {len(sampler)} of the {len(train_set)} "
            f"training windows, fewer than --batch-size {batch_size}, so it would have no batch to "
            f"train on. Start fewer processes (torchrun --nproc_per_node), or use a smaller "
            f"--batch-size or --context-length."
        )
    train_loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False, drop_last=False)
    return train_loader, val_loader


def quiet_unless(condition):
    """A context in which print() shows nothing unless condition holds (the other ranks' logs)."""
    return contextlib.nullcontext() if condition else contextlib.redirect_stdout(io.StringIO())


def train(args, rank, world_size, device):
    is_main = rank == 0
    cfg = {**GPT_SMALL_CONFIG, "context_length": args.context_length, "emb_dim": args.emb_dim,
           "n_heads": args.n_heads, "n_layers": args.n_layers, "drop_rate": args.drop_rate}
    with open(get_data_file("the-verdict.txt"), encoding="utf-8") as f:
        text = f.read()
    train_loader, val_loader = make_loaders(text, args.context_length, args.batch_size,
                                            rank, world_size, args.seed)
    bf16 = {"off": False, "on": True, "auto": "auto"}[args.bf16]  # train_model_simple's switch
    if is_main:
        print(f"{world_size} process(es) on {device.type} x batch {args.batch_size} = "
              f"{world_size * args.batch_size} sequences per step, {len(train_loader)} steps per epoch")
        if args.bf16 != "off":
            on = use_bf16(bf16, device)
            print(f"--bf16 {args.bf16}: matrix products in {'bfloat16' if on else 'float32'}"
                  + ("" if on else f" (no native bfloat16 on this {device.type})"))

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = GPTModel(cfg).to(device)
    if dist.is_initialized():  # started by torchrun
        # DDP copies rank 0's weights to every rank, then all-reduces (averages) the gradients
        # during backward()
        model = DDPModel(model, device_ids=[device.index] if device.type == "cuda" else None)
    torch.manual_seed(args.seed + rank)  # but different dropout masks on each rank
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    with quiet_unless(is_main):  # every rank evaluates and samples alike; rank 0's log is shown
        train_losses, val_losses, _ = train_model_simple(
            model, train_loader, val_loader, optimizer, device, num_epochs=args.epochs,
            eval_freq=args.eval_freq, eval_iter=args.eval_iter, start_context="Every effort moves you",
            tokenizer=tiktoken.get_encoding("gpt2"), bf16=bf16,
        )

    plain_model = getattr(model, "module", model)
    steps = args.epochs * len(train_loader)
    if args.save_rank_states is not None:
        save_checkpoint(args.save_rank_states / f"rank{rank}.pt", plain_model, config=cfg, step=steps)
    if is_main:  # one writer: the weights are the same on every rank
        save_checkpoint(args.out, plain_model, optimizer, config=cfg, step=steps, world_size=world_size,
                        train_losses=train_losses, val_losses=val_losses)
        print(f"{steps} steps done; checkpoint saved to {display_path(args.out)}")


def main(argv=None):
    args = parse_args(argv)
    prepare_tiktoken_offline()  # GPT-2's tokenizer, with no network
    rank, world_size, device = setup_distributed()
    try:
        train(args, rank, world_size, device)
    except ValueError as e:
        sys.exit(f"train_ddp.py (rank {rank} of {world_size}): error: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
