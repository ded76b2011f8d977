"""Bad input raises a Python exception carrying the Rust message, never a crash."""

import numpy as np
import pytest
import torch

import cfg_guidance as cg

SHAPE = (2, 4, 8)


def pair(dtype=torch.float32):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(SHAPE, generator=gen).to(dtype), torch.randn(SHAPE, generator=gen).to(dtype)


def test_wrong_dtype():
    c, u = pair(torch.float64)
    with pytest.raises(cg.GuidanceError, match=r"branch `cond` \(output `sample`\): dtype float64 is not supported"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c, "uncond": u})
    with pytest.raises(cg.GuidanceError, match="dtype int32 is not supported"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": np.zeros(SHAPE, np.int32), "uncond": np.zeros(SHAPE, np.int32)})


def test_mixed_dtypes():
    c, u = pair()
    with pytest.raises(cg.GuidanceError, match=r"branch `uncond`: expected shape \[2, 4, 8\] f32, got \[2, 4, 8\] bf16"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c, "uncond": u.bfloat16()})


def test_non_contiguous():
    c, u = pair()
    with pytest.raises(cg.GuidanceError, match=r"branch `uncond` \(output `sample`\): the tensor is not contiguous"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c.transpose(1, 2).contiguous(), "uncond": u.transpose(1, 2)})
    with pytest.raises(cg.GuidanceError, match="not contiguous"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c.numpy()[:, ::2], "uncond": u.numpy()[:, ::2]})


def test_mismatched_shapes():
    c, u = pair()
    with pytest.raises(cg.GuidanceError, match=r"branch `uncond`: expected shape \[2, 4, 8\] f32, got \[2, 4, 4\] f32"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c, "uncond": u[..., :4].contiguous()})


def test_missing_branch():
    c, _ = pair()
    with pytest.raises(cg.GuidanceError, match="branch `uncond` is needed at this step but no prediction was given for it"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c})


def test_a_refused_step_leaves_the_state_as_it_was():
    c, u = pair()
    g = cg.Guider("apg")
    fresh = cg.Guider("apg")
    with pytest.raises(cg.GuidanceError):
        g.combine(0, 10, None, {"cond": c, "uncond": u[..., :4].contiguous()})
    assert torch.equal(g.combine(0, 10, None, {"cond": c, "uncond": u})["sample"], fresh.combine(0, 10, None, {"cond": c, "uncond": u})["sample"])


def test_apg_state_of_another_shape():
    c, u = pair()
    g = cg.Guider("apg")
    g.combine(0, 10, None, {"cond": c, "uncond": u})
    with pytest.raises(cg.GuidanceError, match="holds momentum for 64 elements"):
        g.combine(1, 10, None, {"cond": c[:1].contiguous(), "uncond": u[:1].contiguous()})
    g.start()
    g.combine(0, 10, None, {"cond": c[:1].contiguous(), "uncond": u[:1].contiguous()})


def test_other_devices_are_refused():
    c, u = pair()
    with pytest.raises(cg.GuidanceError, match=r"branch `cond` \(output `sample`\): could not be read through DLPack: .*meta$"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": c.to("meta"), "uncond": u.to("meta")})


def test_not_a_tensor():
    with pytest.raises(TypeError, match="expected a torch.Tensor or numpy.ndarray, got list"):
        cg.Guider("cfg").combine(0, 10, None, {"cond": [1.0], "uncond": [1.0]})


def test_sigma_needed_and_steps():
    c, u = pair()
    with pytest.raises(cg.GuidanceError, match="needs the scheduler's sigma"):
        cg.Guider("guidance_interval").combine(0, 10, None, {"cond": c, "uncond": u})
    cg.Guider("guidance_interval").combine(0, 10, 0.5, {"cond": c, "uncond": u})
    with pytest.raises(cg.GuidanceError, match="step 10 is not below num_steps 10"):
        cg.Guider("cfg").combine(10, 10, None, {"cond": c, "uncond": u})


def test_outputs_must_not_alias_inputs():
    c, u = pair()
    g = cg.Guider("cfg")
    with pytest.raises(cg.GuidanceError, match="shares memory"):
        g.combine_into(0, 10, None, {"cond": c, "uncond": u}, {"sample": u})


def test_bad_guider_arguments():
    with pytest.raises(cg.GuidanceError, match="rank 2 of world size 2"):
        cg.Guider("cfg", world_size=2, rank=2)
    with pytest.raises(cg.GuidanceError, match="mode `quick`"):
        cg.Guider("cfg", mode="quick")
    with pytest.raises(cg.GuidanceError, match="has outputs"):
        cg.Guider("ltx2").combine(0, 10, None, {"cond": pair()[0]})
