# Generated from finetune/LLM-finetune-lora.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% finetune/LLM-finetune-lora.ipynb, cell 4
import math

import torch
import torch.nn as nn


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
    "attention": ("att.W_query", "att.W_key", "att.W_value", "att.out_proj"),
    "feed_forward": ("ff.layers.0", "ff.layers.2"),
    "all_linear": ("att.W_query", "att.W_key", "att.W_value", "att.out_proj", "ff.layers.0", "ff.layers.2"),
}


# %% finetune/LLM-finetune-lora.ipynb, cell 16
def add_lora(model, rank, alpha, targets=LORA_TARGETS["all_linear"]):
    """Freeze every parameter of `model`, then wrap each nn.Linear whose name ends with one of
    `targets` (e.g. "att.W_query" matches "trf_blocks.0.att.W_query") in a LinearWithLoRA, in
    place. Returns the names of the wrapped layers: only their A and B matrices are trainable."""
    if any(isinstance(module, LinearWithLoRA) for module in model.modules()):
        raise ValueError("The model already has LoRA layers: merge_lora(model) first, or start from the base.")
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen = [name for name in linear_names if any(name == t or name.endswith("." + t) for t in targets)]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in chosen):
            raise ValueError(f"No nn.Linear layer of the model is named {target!r} (or ends with it); "
                             f"its linear layers are {', '.join(linear_names[:7])}, ...")
    wrapped = {name: LinearWithLoRA(model.get_submodule(name), rank, alpha) for name in chosen}  # checks rank
    model.requires_grad_(False)
    for name, module in wrapped.items():
        model.set_submodule(name, module)
    return chosen


# %% finetune/LLM-finetune-lora.ipynb, cell 41
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
