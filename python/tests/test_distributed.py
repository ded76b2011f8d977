"""CFG-parallel over torch.distributed (gloo, CPU processes).

For world sizes 1 to 5, spawned processes run policies step by step with
`guided_step`: LTX-2's four branches over two outputs (idle rank at 5), and
the two-branch APG and CFG-Zero* (idle ranks from 3; CFG-Zero*'s zero-init
step has no branch at all). In deterministic mode every rank's result has
the bits of a single-process `Guider.combine` of the same predictions; in
fast mode (all-reduce of f32 partial forms) every rank holds the same bits
and they agree with the single-process result to f32 rounding. Each rank's
`predict` is called with exactly the plan's branches for it, never empty.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cfg_guidance as cg
from cfg_guidance.distributed import guided_step

STEPS = 4
SHAPES = {"ltx2": {"video": [1, 64, 16], "audio": [1, 32, 8]}, "apg": {"sample": [2, 16, 8]}, "zero_star": {"sample": [2, 16, 8]}}
# (policy, mode, prediction dtype)
RUNS = [
    ("ltx2", "deterministic", torch.bfloat16),
    ("ltx2", "deterministic", torch.float32),
    ("ltx2", "fast", torch.float32),
    ("apg", "deterministic", torch.bfloat16),
    ("zero_star", "deterministic", torch.float32),
    ("apg", "fast", torch.float32),
]


def prediction(policy, step, branch, output, dtype):
    """A seeded prediction, the same in every process."""
    branches = cg.load(policy).branches
    outputs = cg.load(policy).outputs
    seed = 10_000 * step + 100 * branches.index(branch) + outputs.index(output)
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPES[policy][output], generator=torch.Generator().manual_seed(10_000 * step + output_seed(output)))
    return (base + 0.3 * torch.randn(SHAPES[policy][output], generator=gen)).to(dtype)


def output_seed(output):
    return sum(map(ord, output))


def run(rank, world, policy, mode, dtype):
    """This rank's results of every step, and the single-process ones."""
    guider = cg.Guider(policy, world_size=world, rank=rank, mode=mode)
    single = cg.Guider(policy)
    outputs = guider.outputs
    got, want, collectives = [], [], []
    for step in range(STEPS):
        plan = guider.plan(step, STEPS, None, SHAPES[policy], dtype)
        collectives.append(plan.collective)

        def predict(branches):
            assert branches, "an idle rank was asked to predict"
            assert branches == plan.branches_for(rank)
            return {b: {o: prediction(policy, step, b, o, dtype) for o in outputs} for b in branches}

        got.append(guided_step(guider, step, STEPS, None, predict, shape=SHAPES[policy], dtype=dtype))
        every = {b: {o: prediction(policy, step, b, o, dtype) for o in outputs} for b in single.policy.branches}
        want.append(single.combine(step, STEPS, None, every))
    return got, want, collectives


def worker(rank, world, init_file, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        results = {f"{p}/{m}/{d}": run(rank, world, p, m, d) for p, m, d in RUNS}
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
def test_cfg_parallel_matches_the_single_process_run(world, tmp_path):
    mp.spawn(worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    for policy, mode, dtype in RUNS:
        key = f"{policy}/{mode}/{dtype}"
        got0, want, collectives = ranks[0][key]
        # APG's two f32 forms move as many bytes as its two f32 branches: a tie goes to the gather.
        reduces = mode == "fast" and policy == "ltx2"
        expected = {1: "none"}.get(world, "all-reduce" if reduces else "all-gather")
        if not (policy == "zero_star"):
            assert set(collectives) == {expected}, (key, collectives)
        else:
            # The zero-init step needs no branch: nothing to exchange.
            assert collectives[0] == "none" and set(collectives[1:]) == {expected}, (key, collectives)
        for step in range(STEPS):
            for output, t in got0[step].items():
                for r in range(1, world):
                    assert torch.equal(ranks[r][key][0][step][output], t), f"{key} step {step}: rank {r} differs from rank 0"
                ref = want[step][output]
                if mode == "deterministic" or world == 1:
                    assert torch.equal(t, ref), f"{key} step {step} `{output}`: not the single-process bits"
                else:
                    scale = float(ref.abs().max())
                    assert float((t - ref).abs().max()) <= 16 * torch.finfo(torch.float32).eps * scale, (key, step, output)
