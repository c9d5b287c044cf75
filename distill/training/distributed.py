"""Which process of a distributed run (`torchrun`, `accelerate launch`) this is, and how it leaves.

Every process of such a run runs the train stage; rank 0 alone writes the run's bookkeeping. Nothing here
imports torch: the commands call these whether or not they trained.
"""

from __future__ import annotations

import os
import sys

__all__ = ["is_main_process", "leave_process_group"]


def is_main_process() -> bool:
    """True in a plain process and in rank 0 of a distributed run."""
    return int(os.environ.get("RANK", "0")) == 0


def leave_process_group() -> None:
    """End this process's part in a distributed run, if it has one.

    torch asks every process to call `destroy_process_group()` before it exits; a rank that left without it
    was seen aborting at exit ("terminate called without an active exception") while its communication
    threads were torn down. No barrier: after an error the other ranks may never get here. A no-op in a
    plain process.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
