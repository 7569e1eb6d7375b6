# Generated from post_training/LLM-saving-loading.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% post_training/LLM-saving-loading.ipynb, cell 5
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from course.ch3_architecture import GPT_124M_CONFIG, GPT_FAMILY  # chapter 3
from course.ch4b_performance import GPTModel  # chapter 3's model, with chapter 4b's KV cache
from course.infra import CheckpointError, DataFileError, atomic_write, get_data_file  # not taught


# %% post_training/LLM-saving-loading.ipynb, cell 24
def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    config: dict | None = None, step: int | None = None, **extra) -> None:
    """Write model (and optimizer) state atomically: a crash mid-save leaves the old file intact.

    The checkpoint also holds the random number generators' state, so that resuming with
    load_checkpoint(..., restore_rng=True) draws the same dropout masks and shuffles."""
    reserved = {"model", "optimizer", "config", "step", "rng_state"} & set(extra)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are names save_checkpoint uses itself; pick other names.")
    state = {
        "model": model.state_dict(),
        "config": config,
        "step": step,
        "rng_state": {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        **extra,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    with atomic_write(path) as f:  # a crash mid-save leaves the old file intact
        torch.save(state, f)


# %% post_training/LLM-saving-loading.ipynb, cell 26
def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, map_location: str | torch.device = "cpu",
                    restore_rng: bool = False) -> dict:
    """Load a checkpoint safely (weights_only=True: tensors and plain containers, no code),
    restore model and optimizer state if given, and return the whole checkpoint dict.

    restore_rng=True also restores the random number generators, for an exact resume."""
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save writes a zip with a CRC-32 per member
            damaged = archive.testzip()
        if damaged is not None:
            raise CheckpointError(f"{path} is damaged: its part {damaged!r} fails its CRC-32 check.")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, CheckpointError):
        raise
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # the object the file asks pickle to call
        what = f"it asks for {found.group(1)}" if found else (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} holds Python objects that weights_only=True refuses to load, because loading "
            f"them could run code ({what}). Load it with torch.load(path, weights_only=False) only "
            f"if you trust where the file came from."
        ) from None
    except Exception as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or damaged?): {type(exc).__name__}: {reason}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(
            f"{path} has no 'model' entry, so save_checkpoint did not write it. If it is a bare "
            f"state_dict, load it with model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if model is not None:
        own, saved = model.state_dict(), state["model"]
        problems = []
        missing = sorted(set(own) - set(saved))
        unexpected = sorted(set(saved) - set(own))
        wrong_shape = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
                       for k, v in own.items() if k in saved and saved[k].shape != v.shape]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("mismatched sizes", wrong_shape)):
            if items:
                problems.append(f"{len(items)} {label}: {items[:5]}" + (" ..." if len(items) > 5 else ""))
        if problems:
            raise CheckpointError(
                f"{path} was saved from a model with a different config; "
                + "; ".join(problems)
                + ". Build the model from the checkpoint's own 'config' entry before loading."
            )
        model.load_state_dict(saved)
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{path} was saved without optimizer state; pass optimizer=None.")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        if "rng_state" not in state:
            raise CheckpointError(f"{path} holds no random number generator state; use restore_rng=False.")
        torch.set_rng_state(state["rng_state"]["cpu"].cpu())
        if torch.cuda.is_available() and state["rng_state"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng_state"]["cuda"]])
    return state


# %% post_training/LLM-saving-loading.ipynb, cell 55
GPT2_SIZES = {  # model name on the Hugging Face hub -> its size in GPT_FAMILY
    "gpt2": "gpt2-small (124M)",
    "gpt2-medium": "gpt2-medium (355M)",
    "gpt2-large": "gpt2-large (774M)",
    "gpt2-xl": "gpt2-xl (1558M)",
}


def gpt2_config(model_name: str = "gpt2") -> dict:
    """The GPTModel config of OpenAI's GPT-2 `model_name`."""
    if model_name not in GPT2_SIZES:
        raise ValueError(f"Unknown GPT-2 model {model_name!r}; choose one of {list(GPT2_SIZES)}.")
    return {**GPT_124M_CONFIG, **GPT_FAMILY[GPT2_SIZES[model_name]],
            "context_length": 1024, "qkv_bias": True, "drop_rate": 0.0}


# %% post_training/LLM-saving-loading.ipynb, cell 59
def gpt2_weights_path(model_name: str = "gpt2", data_dir: str | Path | None = None) -> Path:
    """A verified local path to GPT-2 `model_name`'s model.safetensors (found or downloaded once)."""
    gpt2_config(model_name)  # fails early on an unknown name
    return get_data_file(f"gpt2/{model_name}/model.safetensors", data_dir=data_dir)


# %% post_training/LLM-saving-loading.ipynb, cell 63
def assign_weight(param: torch.nn.Parameter | None, tensor: torch.Tensor, name: str) -> None:
    """Copy tensor into param, or say which tensor does not fit (a config that does not match)."""
    if param is None:
        raise ValueError(f"{name}: the model has no parameter for this tensor; build it with qkv_bias=True.")
    if param.shape != tensor.shape:
        raise ValueError(
            f"{name}: the file's tensor has shape {tuple(tensor.shape)} but the model expects "
            f"{tuple(param.shape)}; build the model with the config of these weights."
        )
    with torch.no_grad():
        param.copy_(tensor)


# %% post_training/LLM-saving-loading.ipynb, cell 65
def load_gpt2_params(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Copy GPT-2 tensors, named as OpenAI/Hugging Face publish them, into our GPTModel."""
    # Keys may start with "transformer."; "h.N.attn.bias" and "h.N.attn.masked_bias" are the
    # causal mask and its fill value, buffers our attention makes itself (note: "c_attn.bias"
    # does not end with ".attn.bias", so the real QKV bias is kept).
    params = {k.removeprefix("transformer."): v.float() for k, v in params.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    used = set()

    def take(name):
        if name not in params:
            raise ValueError(f"The weights have no tensor {name!r}: they are not a GPT-2 of this size.")
        used.add(name)
        return params[name]

    assign_weight(model.tok_emb.weight, take("wte.weight"), "wte.weight")
    assign_weight(model.pos_emb.weight, take("wpe.weight"), "wpe.weight")
    for i, block in enumerate(model.trf_blocks):
        h = f"h.{i}."
        # Conv1D stores weights as (in, out), nn.Linear as (out, in): transpose every matrix.
        # c_attn is Q, K and V side by side: (emb, 3 * emb) -> three (emb, emb) matrices.
        q_w, k_w, v_w = take(h + "attn.c_attn.weight").chunk(3, dim=-1)
        q_b, k_b, v_b = take(h + "attn.c_attn.bias").chunk(3, dim=-1)
        att = block.att
        for linear, w, b, part in ((att.W_query, q_w, q_b, "Q"), (att.W_key, k_w, k_b, "K"),
                                   (att.W_value, v_w, v_b, "V")):
            assign_weight(linear.weight, w.T, f"{h}attn.c_attn.weight ({part} part)")
            assign_weight(linear.bias, b, f"{h}attn.c_attn.bias ({part} part)")
        assign_weight(att.out_proj.weight, take(h + "attn.c_proj.weight").T, h + "attn.c_proj.weight")
        assign_weight(att.out_proj.bias, take(h + "attn.c_proj.bias"), h + "attn.c_proj.bias")
        fc, proj = block.ff.layers[0], block.ff.layers[2]
        assign_weight(fc.weight, take(h + "mlp.c_fc.weight").T, h + "mlp.c_fc.weight")
        assign_weight(fc.bias, take(h + "mlp.c_fc.bias"), h + "mlp.c_fc.bias")
        assign_weight(proj.weight, take(h + "mlp.c_proj.weight").T, h + "mlp.c_proj.weight")
        assign_weight(proj.bias, take(h + "mlp.c_proj.bias"), h + "mlp.c_proj.bias")
        for norm, ln in ((block.norm1, "ln_1"), (block.norm2, "ln_2")):
            assign_weight(norm.scale, take(f"{h}{ln}.weight"), f"{h}{ln}.weight")
            assign_weight(norm.shift, take(f"{h}{ln}.bias"), f"{h}{ln}.bias")
    assign_weight(model.final_norm.scale, take("ln_f.weight"), "ln_f.weight")
    assign_weight(model.final_norm.shift, take("ln_f.bias"), "ln_f.bias")
    # GPT-2 ties its output head to the token embedding; files usually store it only once.
    head = "lm_head.weight" if "lm_head.weight" in params else "wte.weight"
    assign_weight(model.out_head.weight, take(head), head)
    unused = sorted(set(params) - used)
    if unused:
        raise ValueError(
            f"The weights have {len(unused)} tensor(s) the model has no place for, e.g. "
            f"{unused[:3]}: the config has fewer layers than these weights."
        )
    return model


# %% post_training/LLM-saving-loading.ipynb, cell 67
def load_gpt2_safetensors(path: str | Path, cfg: dict) -> GPTModel:
    """A GPTModel built from cfg holding the GPT-2 weights stored in the safetensors file path."""
    try:
        params = load_file(path)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise DataFileError(
            f"{path} is not a readable safetensors file ({type(exc).__name__}: {exc}); delete it "
            f"and fetch it again."
        ) from None
    model = GPTModel(cfg)
    load_gpt2_params(model, params)
    return model.eval()


def load_pretrained_gpt2(model_name: str = "gpt2", data_dir: str | Path | None = None) -> GPTModel:
    """OpenAI's pretrained GPT-2 `model_name` as a GPTModel in eval mode (downloaded once)."""
    return load_gpt2_safetensors(gpt2_weights_path(model_name, data_dir), gpt2_config(model_name))
