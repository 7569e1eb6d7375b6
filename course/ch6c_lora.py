# Generated from finetune/LLM-finetune-lora.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-lora.ipynb, cell 4
import copy
import math

import torch
import torch.nn as nn

from course.ch6a_classification import TopLayers  # chapter 6a


# %% finetune/LLM-finetune-lora.ipynb, cell 8
class LoRALayer(nn.Module):
    """The trainable low-rank path of LoRA: x -> (alpha / rank) * B (A x), with A of shape
    (rank, in_features) and B of shape (out_features, rank). B starts at zero, so the path adds
    exactly 0 until training changes it."""

    def __init__(self, in_features, out_features, rank, alpha, device=None, dtype=None):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA's rank must be a whole number >= 1 (got rank={rank!r}): try rank=8.")
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # the initialisation nn.Linear gives its weight
        self.B = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))

    def forward(self, x):
        return self.scaling * ((x @ self.A.T) @ self.B.T)  # (..., in) -> (..., rank) -> (..., out)

    def delta_weight(self):
        """The change this path makes to W: (alpha / rank) * B A, shaped like nn.Linear's weight."""
        return self.scaling * (self.B @ self.A)  # (out_features, in_features)


# %% finetune/LLM-finetune-lora.ipynb, cell 10
class LinearWithLoRA(nn.Module):
    """A pretrained nn.Linear, frozen, plus a trainable LoRA path: linear(x) + lora(x)."""

    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha,
                              device=linear.weight.device, dtype=linear.weight.dtype)
        self.linear = linear.requires_grad_(False)  # W (and its bias) stay as pretrained

    def forward(self, x):
        return self.linear(x) + self.lora(x)


# %% finetune/LLM-finetune-lora.ipynb, cell 14
LORA_TARGETS = {
    "attention": ("att",),  # W_query, W_key, W_value, out_proj
    "feed_forward": ("ff",),  # GPT-2's two layers; SmolLM2's SwiGLU has three
    "all_linear": ("att", "ff"),
}


def matches(name, target):
    """Whether the layer called `name` is `target`, ends with it, or sits inside a module called `target`."""
    return name == target or name.endswith("." + target) or f".{target}." in f".{name}"


# %% finetune/LLM-finetune-lora.ipynb, cell 16
def add_lora(model, rank, alpha, targets=LORA_TARGETS["all_linear"]):
    """Freeze every parameter of `model`, then wrap each nn.Linear that one of `targets` matches (see
    `matches`) in a LinearWithLoRA, in place. Returns the names of the wrapped layers: only their A
    and B matrices are trainable."""
    if any(isinstance(module, LinearWithLoRA) for module in model.modules()):
        raise ValueError("The model already has LoRA layers: merge_lora(model) first, or start from the base.")
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for target in targets:
        if not any(matches(name, target) for name in linear_names):
            raise ValueError(f"No nn.Linear layer of the model is named {target!r}, ends with it or sits in a "
                             f"module of that name; its linear layers are {', '.join(linear_names[:7])}, ...")
    chosen = [name for name in linear_names if any(matches(name, target) for target in targets)]
    wrapped = {name: LinearWithLoRA(model.get_submodule(name), rank, alpha) for name in chosen}  # checks rank
    model.requires_grad_(False)
    for name, module in wrapped.items():
        model.set_submodule(name, module)
    return chosen


# %% finetune/LLM-finetune-lora.ipynb, cell 24
def trainable_top(model, first_block, seed, lora=None):
    """A copy of model's layers from trf_blocks[first_block] up (TopLayers), with a new 2-class head
    drawn with seed. lora=None: chapter 6a's recipe (the last block, the final norm and the head
    trainable); else a dict of add_lora's arguments: LoRA on those layers, and the head, trainable."""
    torch.manual_seed(seed)
    top = copy.deepcopy(TopLayers(model, first_block), {id(model): model})  # copies the top layers only
    top.out_head = nn.Linear(top.out_head.in_features, 2, device=top.out_head.weight.device)
    top.requires_grad_(False)
    if lora is None:
        for module in [top.trf_blocks[-1], top.final_norm, top.out_head]:
            module.requires_grad_(True)
    else:
        add_lora(top.trf_blocks, **lora)
        top.out_head.requires_grad_(True)
    return top


# %% finetune/LLM-finetune-lora.ipynb, cell 35
def merge_lora(model):
    """Replace every LinearWithLoRA of `model`, in place, by one nn.Linear whose weight is
    W + (alpha / rank) B A (bias unchanged). Returns the model: the same function, no LoRA left."""
    names = [name for name, module in model.named_modules() if isinstance(module, LinearWithLoRA)]
    if not names:
        raise ValueError("The model has no LoRA layers to merge: call add_lora(model, ...) first.")
    for name in names:
        wrapped = model.get_submodule(name)
        linear = wrapped.linear
        merged = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(linear.weight + wrapped.lora.delta_weight())
            if linear.bias is not None:
                merged.bias.copy_(linear.bias)
        model.set_submodule(name, merged.requires_grad_(False))
    return model
