"""The guider on CUDA tensors: DLPack import of device memory, the project's
kernels on the tensors' device, in place, with the bits of the CPU run.

The tensors are device memory from the CUDA driver (see cuda_arrays.py): on
a machine without a GPU, the project's CUDA stand-in (scripts/test.sh runs
this file with it on LD_LIBRARY_PATH and CFG_REQUIRE_CUDA=1). Without a
driver these tests skip with the reason, unless CFG_REQUIRE_CUDA=1.
"""

import os

import numpy as np
import pytest

import cfg_guidance as cg

from cuda_arrays import CudaArray, Driver, cpu_tensor, tensor_bits


@pytest.fixture(scope="module")
def driver():
    try:
        d = Driver()
        if d.count == 0:
            raise OSError("the CUDA driver reports no device")
        return d
    except (OSError, RuntimeError) as e:
        if os.environ.get("CFG_REQUIRE_CUDA") == "1":
            raise
        pytest.skip(f"no CUDA device ({e}); scripts/test.sh runs these tests on the CUDA stand-in")


def run_both(driver, policy, branches, outputs, steps, dtype, shape, device=0, sigma=None):
    """`steps` steps of `policy` on CPU torch tensors and on CUDA arrays with
    the same rounded inputs; returns (cpu bits, cuda bits) per step and output."""
    rng = np.random.default_rng(7)
    cpu, gpu = cg.Guider(policy), cg.Guider(policy)
    cpu.start()
    gpu.start()
    results = []
    for step in range(steps):
        values = {(b, o): rng.standard_normal(shape[o]).astype(np.float32) for b in branches for o in outputs}
        host = {k: cpu_tensor(v, dtype) for k, v in values.items()}
        dev = {k: CudaArray.upload(driver, v, dtype, device) for k, v in values.items()}
        want = cpu.combine(step, steps, sigma, {b: {o: host[(b, o)] for o in outputs} for b in branches})
        outs = {o: CudaArray(driver, shape[o], dtype, device) for o in outputs}
        gpu.combine_into(step, steps, sigma, dev, outs)
        for o in outputs:
            results.append((step, o, tensor_bits(want[o]), outs[o].bits()))
        for a in dev.values():
            # The consumer stream handed to __dlpack__: CUDA's legacy default stream (1) without torch.
            assert a.streams == [1], a.streams
    return results


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(
    "policy,branches",
    [
        ("cfg", ["cond", "uncond"]),  # linear: one combine kernel
        ("cfg_renorm", ["cond", "uncond"]),  # fused per-token renorm
        ("std_rescale", ["cond", "uncond"]),  # fused two-pass rescale
        ("apg", ["cond", "uncond"]),  # momentum kept on the device between steps
        ("zero_star", ["cond", "uncond"]),  # the generic path, zero-init steps
    ],
)
def test_combine_on_cuda_gives_the_cpu_bits(driver, policy, branches, dtype):
    shape = {"sample": (2, 64, 96)}
    for step, output, want, have in run_both(driver, policy, branches, ["sample"], 4, dtype, shape):
        mismatched = int((want != have).sum())
        assert mismatched == 0, f"{policy} {dtype} step {step} `{output}`: {mismatched} elements differ from the CPU run"


def test_multi_output_policy_on_a_second_device(driver):
    if driver.count < 2:
        pytest.skip("one CUDA device")
    shape = {"video": (1, 32, 48), "audio": (1, 16, 24)}
    branches = ["cond", "uncond", "perturbed", "isolated"]
    for step, output, want, have in run_both(driver, "ltx2", branches, ["video", "audio"], 3, "bfloat16", shape, device=1):
        assert (want == have).all(), f"ltx2 step {step} `{output}` on cuda:1 differs from the CPU run"


def test_combine_writes_in_place_and_leaves_inputs(driver, rng):
    c, u = (rng.standard_normal((4, 256)).astype(np.float32) for _ in range(2))
    dc, du = CudaArray.upload(driver, c, "float32"), CudaArray.upload(driver, u, "float32")
    before = dc.bits().copy(), du.bits().copy()
    out = CudaArray(driver, (4, 256), "float32")
    g = cg.Guider("cfg")
    g.start()
    g.combine_into(0, 10, None, {"cond": dc, "uncond": du}, {"sample": out})
    want = g.combine(0, 10, None, {"cond": c, "uncond": u})["sample"]
    assert (out.bits() == want.view(np.uint32)).all()
    assert (dc.bits() == before[0]).all() and (du.bits() == before[1]).all()


def test_fast_mode_pieces_on_cuda(driver, rng):
    """partial_forms + finish (the all-reduce path) on device memory give the CPU pieces' bits."""
    shape = (2, 64, 32)
    preds = {b: rng.standard_normal(shape).astype(np.float32) for b in ["cond", "uncond"]}
    cpu, gpu = cg.Guider("std_rescale", mode="fast"), cg.Guider("std_rescale", mode="fast")
    cpu.start()
    gpu.start()
    n = cpu.forms_len(0, 10, None, {"sample": shape})
    forms_cpu = np.empty(n, dtype=np.float32)
    cpu.partial_forms(0, 10, None, preds, {"sample": shape}, forms_cpu)
    dev = {b: CudaArray.upload(driver, v, "float32") for b, v in preds.items()}
    forms_gpu = CudaArray(driver, (n,), "float32")
    gpu.partial_forms(0, 10, None, dev, {"sample": shape}, forms_gpu)
    assert (forms_gpu.bits() == forms_cpu.view(np.uint32)).all()

    out_cpu = {"sample": np.empty(shape, dtype=np.float32)}
    cpu.finish(0, 10, None, forms_cpu, out_cpu)
    out_gpu = {"sample": CudaArray(driver, shape, "float32")}
    gpu.finish(0, 10, None, forms_gpu, out_gpu)
    assert (out_gpu["sample"].bits() == out_cpu["sample"].view(np.uint32)).all()


def test_mixed_devices_are_refused(driver, rng):
    c = rng.standard_normal((2, 8)).astype(np.float32)
    g = cg.Guider("cfg")
    g.start()
    on_gpu = CudaArray.upload(driver, c, "float32")
    with pytest.raises(cg.GuidanceError, match=r"is on cpu, but .* is on cuda:0|is on cuda:0, but .* is on cpu"):
        g.combine_into(0, 10, None, {"cond": on_gpu, "uncond": c}, {"sample": CudaArray(driver, (2, 8), "float32")})
    if driver.count >= 2:
        other = CudaArray.upload(driver, c, "float32", device=1)
        with pytest.raises(cg.GuidanceError, match="every tensor of a call must be on one device"):
            g.combine_into(0, 10, None, {"cond": on_gpu, "uncond": other}, {"sample": CudaArray(driver, (2, 8), "float32")})
    # A refused step changed nothing: the next one runs.
    out = CudaArray(driver, (2, 8), "float32")
    g.combine_into(0, 10, None, {"cond": on_gpu, "uncond": on_gpu}, {"sample": out})
    want = cg.Guider("cfg").combine(0, 10, None, {"cond": c, "uncond": c})["sample"]
    assert (out.bits() == want.view(np.uint32)).all()


def test_bad_cuda_tensors_are_refused(driver, rng):
    g = cg.Guider("cfg")
    g.start()
    good = CudaArray.upload(driver, rng.standard_normal((4, 8)).astype(np.float32), "float32")
    strided = CudaArray(driver, (4, 8), "float32", strides=(1, 4))
    with pytest.raises(cg.GuidanceError, match=r"branch `uncond` \(output `sample`\): the tensor is not contiguous"):
        g.combine_into(0, 10, None, {"cond": good, "uncond": strided}, {"sample": CudaArray(driver, (4, 8), "float32")})
    half = CudaArray(driver, (4, 8), "float16")
    with pytest.raises(cg.GuidanceError, match=r"branch `cond`: expected shape \[4, 8\] f32, got \[4, 8\] f16"):
        g.combine_into(0, 10, None, {"cond": half, "uncond": good}, {"sample": CudaArray(driver, (4, 8), "float32")})
    with pytest.raises(cg.GuidanceError, match="shares memory"):
        g.combine_into(0, 10, None, {"cond": good, "uncond": good}, {"sample": good})


def test_cfg_pp_renoise_on_cuda(driver, rng):
    c, u = (rng.standard_normal((2, 64)).astype(np.float32) for _ in range(2))
    dc, du = CudaArray.upload(driver, c, "float32"), CudaArray.upload(driver, u, "float32")
    out, noise = CudaArray(driver, (2, 64), "float32"), CudaArray(driver, (2, 64), "float32")
    g = cg.Guider("cfg_pp")
    g.combine_into(0, 20, None, {"cond": dc, "uncond": du}, {"sample": out}, renoise={"sample": noise})
    want, want_noise = cg.Guider("cfg_pp").combine_with_renoise(0, 20, None, {"cond": c, "uncond": u})
    assert (out.bits() == want["sample"].view(np.uint32)).all()
    assert (noise.bits() == want_noise["sample"].view(np.uint32)).all()
