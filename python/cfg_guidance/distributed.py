"""CFG-parallel over a torch.distributed process group.

Every rank holds a `Guider` made with the group's world size and its own
rank, and calls `guided_step` once per denoising step with the same
arguments. The policy's planner decides which rank computes which branch
(ranks beyond the active branches are idle and compute nothing) and which
collective the step uses:

- all-gather (always in "deterministic" mode): each rank sends its
  predictions in their own dtype, every rank combines all of them in the
  canonical order: the result has the bits of a single-process run;
- all-reduce ("fast" mode, where it moves fewer bytes): each rank sums its
  weighted f32 partial forms, one all-reduce adds them, every rank finishes
  the non-linear part from the sums.

Every rank returns the same guided prediction; no broadcast is needed.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

from ._native import GuidanceError
from .guider import Guider

Shapes = Union[Sequence[int], Mapping[str, Sequence[int]]]


def guided_step(
    guider: Guider,
    step: int,
    num_steps: int,
    sigma: Optional[float],
    predict: Callable[[List[str]], Mapping[str, Any]],
    *,
    shape: Shapes,
    dtype: torch.dtype,
    device: Union[str, torch.device] = "cpu",
    group: Optional[dist.ProcessGroup] = None,
) -> Dict[str, torch.Tensor]:
    """Runs one guided step over `group` (default: the world).

    `predict(branches)` is called with this rank's branches (never with an
    empty list: idle ranks make no model call) and returns
    `{branch: tensor}` (or `{branch: {output: tensor}}` for several outputs),
    each of `shape` and `dtype`. Returns `{output: guided tensor}`, the same
    on every rank.
    """
    shapes = _shapes(guider, shape)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if (guider.rank, guider.world_size) != (rank, world):
        raise GuidanceError(
            f"the guider is rank {guider.rank} of {guider.world_size} but the process group says "
            f"rank {rank} of {world}: make it with Guider(policy, world_size=..., rank=...)"
        )
    plan = guider.plan(step, num_steps, sigma, shapes, dtype)
    mine = plan.branches_for(rank)
    local = guider._flatten(predict(mine)) if mine else {}
    for b, o in plan_parts(plan, rank):
        if (b, o) not in local:
            raise GuidanceError(f"step {step}: predict({mine}) returned no prediction of branch `{b}` for output `{o}`")

    if plan.collective == "all-reduce":
        forms = torch.empty(guider.forms_len(step, num_steps, sigma, shapes), dtype=torch.float32, device=device)
        guider.partial_forms(step, num_steps, sigma, local, shapes, forms)
        dist.all_reduce(forms, op=dist.ReduceOp.SUM, group=group)
        outputs = {o: torch.empty(shapes[o], dtype=dtype, device=device) for o in guider.outputs}
        guider.finish(step, num_steps, sigma, forms, outputs)
        return outputs

    inputs = dict(local)
    if plan.collective == "all-gather":
        inputs.update(_gather(plan, rank, world, local, shapes, dtype, device, group))
    outputs = {o: torch.empty(shapes[o], dtype=dtype, device=device) for o in guider.outputs}
    guider.combine_into(step, num_steps, sigma, inputs, outputs)
    return outputs


def plan_parts(plan, rank: int) -> List[Tuple[str, str]]:
    """The `(branch, output)` predictions `rank` contributes to a gather, in order."""
    return [tuple(p) for p in plan.payload[rank]]


def _gather(plan, rank, world, local, shapes, dtype, device, group) -> Dict[Tuple[str, str], torch.Tensor]:
    """All-gathers every rank's predictions as bytes; returns the other ranks' as tensors (views of the buffer)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    width = max(plan.gather_sizes)
    send = torch.zeros(width, dtype=torch.uint8, device=device)
    at = 0
    for b, o in plan_parts(plan, rank):
        t = local[(b, o)]
        if t.dtype != dtype or list(t.shape) != list(shapes[o]) or not t.is_contiguous():
            raise GuidanceError(
                f"branch `{b}` (output `{o}`): predicted {list(t.shape)} {t.dtype}, "
                f"expected contiguous {list(shapes[o])} {dtype}"
            )
        n = t.numel() * itemsize
        send[at : at + n] = t.reshape(-1).view(torch.uint8)
        at += n
    if at != plan.gather_sizes[rank]:
        raise GuidanceError(f"rank {rank} packed {at} bytes, the plan says {plan.gather_sizes[rank]}")
    received = [torch.empty(width, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(received, send, group=group)
    out: Dict[Tuple[str, str], torch.Tensor] = {}
    for r in range(world):
        if r == rank:
            continue
        at = 0
        for b, o in plan_parts(plan, r):
            n = _numel(shapes[o]) * itemsize
            out[(b, o)] = received[r][at : at + n].view(dtype).reshape(shapes[o])
            at += n
    return out


def _shapes(guider: Guider, shape: Shapes) -> Dict[str, List[int]]:
    if isinstance(shape, Mapping):
        missing = [o for o in guider.outputs if o not in shape]
        if missing:
            raise GuidanceError(f"shape: no shape for outputs {missing}")
        return {o: list(shape[o]) for o in guider.outputs}
    return {o: list(shape) for o in guider.outputs}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
