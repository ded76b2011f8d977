#!/usr/bin/env python3
"""PyTorch eager beside the cfg CPU evaluator, row by row, on the same inputs.

Each operator is written as diffusers, vllm-omni and the official LTX-2 code
write it. For every row this times torch, then asks the Rust bench (started
with --serve, one per allocator) for cfg and the memcpy floor, so the two
sides run interleaved, for CFG_BENCH_ROUNDS rounds (3) per row. Prints a
table of each column's best median and the ratios.
"""
import os
import subprocess
import sys
import time

import torch

WIDTH = 64
OPS = [
    "cfg", "renorm", "renorm_clamped", "std_sample", "std_tensor", "norm_cap", "zero_star", "magnitude", "apg", "ltx2",
    "tcfg", "perp_neg", "apg_mix_cfg", "fdg", "chunked",
]
SIZES = [int(n) for n in os.environ.get("CFG_BENCH_SIZES", "262144,4792320,33554432").split(",")]
# Rounds per row below 10M elements (one above, where a row takes seconds).
ROUNDS = int(os.environ.get("CFG_BENCH_ROUNDS", "3"))
ONE_PASS = {"cfg", "renorm", "renorm_clamped", "apg_mix_cfg", "fdg", "chunked"}


def branch(n, b, dtype):
    i = torch.arange(n, dtype=torch.int64)
    x = ((i * 7 + b * 13) % 1000).to(torch.float32) / 500.0 - 1.0
    return x.reshape(1, n // WIDTH, WIDTH).to(dtype)


def cfg(cond, uncond, s):
    return uncond + s * (cond - uncond)


def plain_cfg(cond, uncond):  # diffusers ClassifierFreeGuidance
    return uncond + 7.5 * (cond - uncond)


def renorm(cond, uncond):  # Qwen-Image (diffusers / vllm-omni QwenImagePipeline)
    comb = cfg(cond, uncond, 4.0)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    noise_norm = torch.norm(comb, dim=-1, keepdim=True)
    return comb * (cond_norm / noise_norm)


def renorm_clamped(cond, uncond):  # LongCat-Image / Bagel cfg_renorm_min
    comb = cfg(cond, uncond, 4.5)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    noise_norm = torch.norm(comb, dim=-1, keepdim=True)
    scale = (cond_norm / (noise_norm + 1e-8)).clamp(min=0.0, max=1.0)
    return comb * scale


def rescale_noise_cfg(noise_cfg, noise_pred_text, guidance_rescale):  # diffusers
    std_text = noise_pred_text.std(dim=list(range(1, noise_pred_text.ndim)), keepdim=True)
    std_cfg = noise_cfg.std(dim=list(range(1, noise_cfg.ndim)), keepdim=True)
    noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg


def std_sample(cond, uncond):
    return rescale_noise_cfg(cfg(cond, uncond, 7.5), cond, 0.7)


def std_tensor(cond, uncond):  # LTX-2 MultiModalGuider's rescale, on a 2-branch CFG
    pred = cfg(cond, uncond, 7.5)
    factor = cond.std() / pred.std()
    factor = 0.7 * factor + (1 - 0.7)
    return pred * factor


def norm_cap(cond, uncond):  # Z-Image cfg_normalization (diffusers / sglang)
    pred = cond + (4.0 - 1.0) * (cond - uncond)
    ori_pos_norm = torch.linalg.vector_norm(cond)
    new_pos_norm = torch.linalg.vector_norm(pred)
    max_new_norm = ori_pos_norm * 1.0
    if new_pos_norm > max_new_norm:
        pred = pred * (max_new_norm / new_pos_norm)
    return pred


def zero_star(cond, uncond):  # diffusers ClassifierFreeZeroStarGuidance
    b = cond.shape[0]
    positive_flat, negative_flat = cond.reshape(b, -1), uncond.reshape(b, -1)
    dot_product = torch.sum(positive_flat * negative_flat, dim=1, keepdim=True)
    squared_norm = torch.sum(negative_flat**2, dim=1, keepdim=True) + 1e-8
    alpha = (dot_product / squared_norm).view(b, *([1] * (cond.ndim - 1)))
    uncond = uncond * alpha
    return uncond + 7.5 * (cond - uncond)


def magnitude(cond, uncond):  # diffusers MagnitudeAwareGuidance
    diff = cond - uncond
    dim = list(range(1, cond.ndim))
    ratio = torch.norm(diff, dim=dim, keepdim=True) / torch.norm(uncond, dim=dim, keepdim=True)
    scale = 1 + (10.0 - 1) * torch.exp(-8.0 * ratio)
    return uncond + scale * diff


class MomentumBuffer:  # diffusers
    def __init__(self, momentum):
        self.momentum, self.running_average = momentum, 0

    def update(self, update_value):
        new_average = self.momentum * self.running_average
        self.running_average = update_value + new_average


def make_apg():
    buf = MomentumBuffer(-0.5)

    def apg(cond, uncond):  # diffusers normalized_guidance
        diff = cond - uncond
        dim = [-i for i in range(1, len(diff.shape))]
        buf.update(diff)
        diff = buf.running_average
        ones = torch.ones_like(diff)
        diff_norm = diff.norm(p=2, dim=dim, keepdim=True)
        scale_factor = torch.minimum(ones, 15.0 / diff_norm)
        diff = diff * scale_factor
        v0, v1 = diff.double(), cond.double()
        v1 = torch.nn.functional.normalize(v1, dim=dim)
        v0_parallel = (v0 * v1).sum(dim=dim, keepdim=True) * v1
        v0_orthogonal = v0 - v0_parallel
        diff_parallel, diff_orthogonal = v0_parallel.type_as(diff), v0_orthogonal.type_as(diff)
        normalized_update = diff_orthogonal + 0.0 * diff_parallel
        return uncond + 7.5 * normalized_update

    return apg


def ltx2(cond, isolated, perturbed, uncond):  # LTX-2 MultiModalGuider
    pred = cond + (3.0 - 1) * (cond - uncond) + 1.0 * (cond - perturbed) + (3.0 - 1) * (cond - isolated)
    factor = cond.std() / pred.std()
    factor = 0.7 * factor + (1 - 0.7)
    return pred * factor


def tcfg(cond, uncond):  # diffusers TangentialClassifierFreeGuidance's normalized_guidance
    preds = torch.stack([cond, uncond], dim=1).float().flatten(2)
    _, _, vh = torch.linalg.svd(preds, full_matrices=False)
    vh_modified = vh.clone()
    vh_modified[:, 1] = 0
    uncond_flat = uncond.reshape(uncond.size(0), 1, -1).float()
    u = torch.matmul(torch.matmul(uncond_flat, vh.transpose(-2, -1)), vh_modified).reshape(uncond.shape).to(cond.dtype)
    return u + 7.5 * (cond - u)


def perp_neg(empty, neg, pos):  # ComfyUI perp_neg (branches in name order)
    p = pos - empty
    n = neg - empty
    perp = n - ((torch.mul(n, p).sum()) / (torch.norm(p) ** 2)) * p
    return empty + 8.0 * (p - 1.0 * perp)


def make_apg_mix_cfg():
    buf = MomentumBuffer(-0.5)

    def apg_mix_cfg(cond, uncond):  # diffusers AdaptiveProjectedMixGuidance before its APG step
        buf.update(cond - uncond)
        return uncond + 3.5 * (cond - uncond)

    return apg_mix_cfg


def token_grid(tokens):  # the most square grid with even sides (ops_common::token_grid)
    root = int(tokens**0.5)
    for h in range(root, 1, -1):
        if h % 2 == 0 and tokens % h == 0 and (tokens // h) % 2 == 0:
            return h, tokens // h
    return 2, tokens // 2


def blur5(x):  # kornia filter2d: the 5 x 5 binomial kernel, depthwise conv2d, reflected borders
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype) / 16.0
    k = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])


def pyrdown(x):  # kornia.geometry.transform.pyrdown
    h, w = x.shape[-2:]
    return torch.nn.functional.interpolate(blur5(x), size=(h // 2, w // 2), mode="bilinear", align_corners=False)


def pyrup(x):  # kornia.geometry.transform.pyrup (diffusers' upsample_and_blur_func)
    h, w = x.shape[-2:]
    return blur5(torch.nn.functional.interpolate(x, size=(h * 2, w * 2), mode="bilinear", align_corners=False))


def build_laplacian_pyramid(x, levels):  # kornia
    g = [x]
    for _ in range(levels - 1):
        g.append(pyrdown(g[-1]))
    return [g[k] - pyrup(g[k + 1]) for k in range(levels - 1)] + [g[-1]]


def fdg(cond, uncond):  # diffusers FrequencyDecoupledGuidance, scales (10, 5), on the token grid as [B, C, H, W]
    b, t, c = cond.shape
    h, w = token_grid(t)
    image = lambda x: x.reshape(b, h, w, c).permute(0, 3, 1, 2)
    pc, pu = build_laplacian_pyramid(image(cond), 2), build_laplacian_pyramid(image(uncond), 2)
    guided = [u + s * (c_ - u) for c_, u, s in zip(pc, pu, (10.0, 5.0))]
    img = guided[-1]
    for i in range(len(guided) - 2, -1, -1):
        img = pyrup(img) + guided[i]
    return img.permute(0, 2, 3, 1).reshape(b, t, c)


def chunked(cond, prefix, uncond):  # MAGI-1: per-chunk scales broadcast along the frames, 16 frames in 4 chunks
    b, t, c = cond.shape
    shape = (b, 4, t // 4, c)
    p = torch.tensor([1.5, 1.5, 1.0, 1.0], dtype=cond.dtype).reshape(1, 4, 1, 1)
    s = torch.tensor([7.5, 7.5, 0.0, 0.0], dtype=cond.dtype).reshape(1, 4, 1, 1)
    c_, p_, u_ = (x.reshape(shape) for x in (cond, prefix, uncond))
    return (u_ + p * (p_ - u_) + s * (c_ - p_)).reshape(b, t, c)


def median_ms(reps, f):
    # Warm up for 0.1 s, as the Rust side does (ops_common::median_ms).
    warm = time.perf_counter()
    f()
    while time.perf_counter() - warm < 0.1:
        f()
    t = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1e3)
    return sorted(t)[len(t) // 2]


def main():
    system, mimalloc = sys.argv[1], sys.argv[2]
    only = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else None
    torch.set_num_threads(2)
    servers = [subprocess.Popen([b, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for b in (system, mimalloc)]

    def ask(server, line):
        server.stdin.write(line + "\n")
        server.stdin.flush()
        return [float(x) for x in server.stdout.readline().split()]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms, best median of {ROUNDS} rounds "
        "(1 above 10M); floor = fastest copy of the bytes the op must move"
    )
    hdr = f"{'op':15} {'dtype':5} {'n':>9} | {'torch':>8} {'cfg':>8} {'cfg+alloc':>9} {'cfg+alloc':>9} {'floor':>7} | {'torch/cfg':>9} {'floor/cfg':>9}"
    print(hdr)
    print(f"{'':15} {'':5} {'':>9} | {'eager':>8} {'into':>8} {'system':>9} {'mimalloc':>9} {'':>7} |")
    for n in SIZES:
        reps = 200 if n < 1_000_000 else (15 if n < 10_000_000 else 5)
        rounds = ROUNDS if n < 10_000_000 else 1
        for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
            for op in OPS:
                if only and op not in only:
                    continue
                branches = {"ltx2": 4, "perp_neg": 3, "chunked": 3}.get(op, 2)
                xs = [branch(n, b, dtype) for b in range(branches)]
                if op == "ltx2":
                    f = lambda: ltx2(*xs)
                elif op == "perp_neg":
                    f = lambda: perp_neg(*xs)
                elif op == "chunked":
                    f = lambda: chunked(*xs)
                elif op == "apg":
                    g = make_apg()
                    f = lambda: g(xs[0], xs[1])
                elif op == "apg_mix_cfg":
                    g = make_apg_mix_cfg()
                    f = lambda: g(xs[0], xs[1])
                else:
                    fn = plain_cfg if op == "cfg" else globals()[op]
                    f = lambda: fn(xs[0], xs[1])
                # Each column is the best of its medians over the rounds: a
                # neighbour's burst on this shared machine slows one round, not all.
                cols = []
                for _ in range(rounds):
                    t = median_ms(reps, f)
                    # torch's OpenMP workers spin after their last parallel region (for up
                    # to 200 ms with Intel's runtime): let them sleep before the Rust side runs.
                    time.sleep(0.3)
                    into, alloc_sys, floor = ask(servers[0], f"{op} {name} {n} {reps}")
                    _, alloc_mi, _ = ask(servers[1], f"{op} {name} {n} {reps}")
                    cols.append((t, into, alloc_sys, alloc_mi, floor))
                del xs
                t, into, alloc_sys, alloc_mi, floor = (min(c) for c in zip(*cols))
                worst = max(into, alloc_sys, alloc_mi)
                print(
                    f"{op:15} {name:5} {n:>9} | {t:8.3f} {into:8.3f} {alloc_sys:9.3f} {alloc_mi:9.3f} {floor:7.3f} | "
                    f"{t / worst:8.2f}x {floor / worst:8.0%}",
                    flush=True,
                )
    for s in servers:
        s.stdin.close()
        s.wait()


if __name__ == "__main__":
    main()
