#!/usr/bin/env python3
"""cfg_guidance's combine beside the same arithmetic in torch eager, on bf16
CPU tensors of 262k and 4.8M elements, in one run (and, where torch sees a
GPU, on CUDA tensors: GPU time per call with torch's events, and the f32
bits compared with the CPU run); then the no-copy
evidence: the output's data pointer, the inputs' pointers and contents
before and after, and the peak resident memory a fresh process adds over
one combine (measured in a subprocess).

    target/pyenv/bin/python scripts/bench-python.py     (after scripts/test-python.sh)

Medians of wall time per call; a benchmark, never a test's assertion.
"""

import json
import statistics
import subprocess
import sys
import time

import torch

import cfg_guidance as cg

SIZES = [262_144, 4_792_320]
WIDTH = 64


def median_us(fn, repeat):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale):  # diffusers
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    return guidance_rescale * (noise_cfg * (std_text / std_cfg)) + (1 - guidance_rescale) * noise_cfg


TORCH = {
    "cfg": lambda c, u: u + 7.5 * (c - u),
    "std_rescale": lambda c, u: rescale_noise_cfg(u + 7.5 * (c - u), c, 0.7),
}

PROBE = r"""
import json, resource, sys
import torch, cfg_guidance as cg
n, policy = int(sys.argv[1]), sys.argv[2]
g = cg.Guider(policy)
small = torch.ones(1, 64, 64, dtype=torch.bfloat16)
g.combine(0, 10, None, {"cond": small, "uncond": small})
gen = torch.Generator().manual_seed(0)
# Drawn in place in bf16: no larger temporary raises the peak before the call.
c = torch.empty(1, n // 64, 64, dtype=torch.bfloat16).normal_(generator=gen)
u = torch.empty(1, n // 64, 64, dtype=torch.bfloat16).normal_(generator=gen)
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
ptrs, copies = (c.data_ptr(), u.data_ptr()), (c.clone(), u.clone())
before = rss_kib()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = g.combine(1, 10, None, {"cond": c, "uncond": u})["sample"]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "rss_grew_kib": after - max(before, peak_before), "rss_before_kib": before, "peak_before_kib": peak_before, "output_kib": out.numel() * 2 // 1024, "inputs_kib": 2 * c.numel() * 2 // 1024,
    "output_ptr_is_new": out.data_ptr() not in ptrs,
    "inputs_same_ptrs_and_bits": ptrs == (c.data_ptr(), u.data_ptr()) and torch.equal(c, copies[0]) and torch.equal(u, copies[1]),
}))
"""


def main():
    # First, while this process is small: a child inherits its parent's peak RSS.
    print("no copy (a fresh process per row; peak RSS growth over one combine):")
    for policy in TORCH:
        for n in SIZES:
            run = subprocess.run([sys.executable, "-c", PROBE, str(n), policy], capture_output=True, text=True, check=True)
            r = json.loads(run.stdout)
            print(
                f"  {policy:<12} {n:>9}: peak RSS +{r['rss_grew_kib']} KiB over {r['rss_before_kib']} KiB (peak before {r['peak_before_kib']}) (output {r['output_kib']} KiB, inputs "
                f"{r['inputs_kib']} KiB); output pointer new: {r['output_ptr_is_new']}; inputs same pointers "
                f"and bits: {r['inputs_same_ptrs_and_bits']}"
            )
    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; bf16 CPU, shape [1, n/64, 64]")
    print(f"{'op':<12} {'elements':>10} {'torch eager':>12} {'combine':>10} {'combine_into':>13} {'combine/torch':>14}")
    for op, eager in TORCH.items():
        g = cg.Guider(op)
        for n in SIZES:
            gen = torch.Generator().manual_seed(n)
            c = torch.randn(1, n // WIDTH, WIDTH, generator=gen).bfloat16()
            u = torch.randn(1, n // WIDTH, WIDTH, generator=gen).bfloat16()
            preds = {"cond": c, "uncond": u}
            out = {"sample": torch.empty_like(c)}
            repeat = 400 if n < 1_000_000 else 60
            t_torch = median_us(lambda: eager(c, u), repeat)
            t_ours = median_us(lambda: g.combine(1, 10, None, preds), repeat)
            t_into = median_us(lambda: g.combine_into(1, 10, None, preds, out), repeat)
            print(f"{op:<12} {n:>10} {t_torch:>10.1f}µs {t_ours:>8.1f}µs {t_into:>11.1f}µs {t_ours / t_torch:>13.2f}x")


def cuda_rows():
    """The same ops on CUDA tensors (the project's kernels, on torch's current
    stream) beside torch eager on the same tensors; f32 results must have the
    CPU run's bits."""
    dev = torch.device("cuda")
    print()
    print(f"CUDA: {torch.cuda.get_device_name(dev)}; time per call from CUDA events over a loop of calls")
    print(f"{'op':<12} {'dtype':<9} {'elements':>10} {'torch eager':>12} {'combine':>10} {'f32 bits = CPU':>15}")

    def per_call_us(fn, repeat):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / repeat

    for op, eager in TORCH.items():
        for dtype in (torch.bfloat16, torch.float32):
            for n in SIZES + [33_554_432]:
                gen = torch.Generator().manual_seed(n)
                c_cpu = torch.randn(1, n // WIDTH, WIDTH, generator=gen).to(dtype)
                u_cpu = torch.randn(1, n // WIDTH, WIDTH, generator=gen).to(dtype)
                c, u = c_cpu.to(dev), u_cpu.to(dev)
                g = cg.Guider(op)
                out = {"sample": torch.empty_like(c)}
                t_torch = per_call_us(lambda: eager(c, u), 50)
                t_ours = per_call_us(lambda: g.combine_into(1, 10, None, {"cond": c, "uncond": u}, out), 50)
                same = "-"
                if dtype == torch.float32:
                    want = cg.Guider(op).combine(1, 10, None, {"cond": c_cpu, "uncond": u_cpu})["sample"]
                    same = str(torch.equal(out["sample"].cpu().view(torch.int32), want.view(torch.int32)))
                name = str(dtype).removeprefix("torch.")
                print(f"{op:<12} {name:<9} {n:>10} {t_torch:>10.1f}µs {t_ours:>8.1f}µs {same:>15}")


if __name__ == "__main__":
    main()
    if torch.cuda.is_available():
        cuda_rows()
    else:
        print("\nno CUDA device visible to torch: the CUDA rows are skipped")
