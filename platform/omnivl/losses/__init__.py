"""Pretraining objectives (paper §3.2): UniVLC, vision-language matching, language modelling.

The only cross-process communication of the library happens through the `gather_fn` hook the contrastive
loss is given (identity by default); `omnivl.losses.distributed` provides the torch.distributed one.
"""

from omnivl.losses.lm import CaptionLoss
from omnivl.losses.matching import MatchingLoss, MatchingOutput, sample_hard_negatives
from omnivl.losses.univlc import GatherFn, MemoryQueue, UniVLCLoss, UniVLCOutput, identity_gather, multi_positive_nll

__all__ = [
    "CaptionLoss", "GatherFn", "MatchingLoss", "MatchingOutput", "MemoryQueue", "UniVLCLoss", "UniVLCOutput",
    "identity_gather", "multi_positive_nll", "sample_hard_negatives",
]
