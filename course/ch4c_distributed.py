# Generated from training/LLM-distributed.ipynb by `python -m course.export`: DO NOT EDIT.
# Edit the notebook's `#| export` cells instead, then run that command again.


# %% training/LLM-distributed.ipynb, cell 4
from collections.abc import Iterator

from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


# %% training/LLM-distributed.ipynb, cell 23
class ReshufflingSampler(DistributedSampler):
    """A DistributedSampler that calls set_epoch(epoch + 1) itself after every full pass, so
    that chapter 4's loop, which never calls set_epoch, gets a new shuffle every epoch."""

    def __iter__(self) -> Iterator[int]:
        yield from super().__iter__()
        self.set_epoch(self.epoch + 1)


# %% training/LLM-distributed.ipynb, cell 32
class DDPModel(DistributedDataParallel):
    """DistributedDataParallel that passes attribute lookups it cannot answer (context_length,
    trf_blocks, ...) to the wrapped model, so chapter 4's loop can evaluate and sample through it."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
