"""CFG++ from Python: the guided prediction and the re-noising one a sampler needs."""

import numpy as np
import pytest
import torch

import cfg_guidance as cg

SHAPE = (2, 4, 8)


def pair(dtype):
    gen = torch.Generator().manual_seed(11)
    return torch.randn(SHAPE, generator=gen).to(dtype), torch.randn(SHAPE, generator=gen).to(dtype)


def test_the_policy_names_its_renoise_outputs():
    assert cg.Policy.load("cfg_pp").renoise_outputs == ["sample"]
    assert cg.Policy.load("cfg").renoise_outputs == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_combine_with_renoise_gives_the_guided_x0_and_the_uncond(dtype):
    c, u = pair(dtype)
    g = cg.Guider("cfg_pp")
    g.start()
    guided, renoise = g.combine_with_renoise(0, 20, None, {"cond": c, "uncond": u})
    assert list(renoise) == ["sample"]
    # The re-noising prediction of `renoise: Ref("uncond")` is the uncond, bit for bit.
    assert torch.equal(renoise["sample"], u)
    # The guided one is plain `combine`'s: u + 0.8·(c − u), one rounding from the f64 value.
    assert torch.equal(guided["sample"], cg.Guider("cfg_pp").combine(0, 20, None, {"cond": c, "uncond": u})["sample"])
    exact = u.double() + 0.8 * (c.double() - u.double())
    assert torch.allclose(guided["sample"].double(), exact, rtol=2 ** -7 if dtype == torch.bfloat16 else 1e-6, atol=1e-6)


def test_renoise_into_numpy_arrays():
    c, u = (t.numpy() for t in pair(torch.float32))
    g = cg.Guider("cfg_pp")
    out, noise = np.empty(SHAPE, np.float32), np.empty(SHAPE, np.float32)
    g.combine_into(3, 20, None, {"cond": c, "uncond": u}, {"sample": out}, renoise={"sample": noise})
    assert (noise == u).all()


def test_renoise_of_an_output_that_declares_none_is_refused():
    c, u = pair(torch.float32)
    out, noise = torch.empty(SHAPE), torch.empty(SHAPE)
    with pytest.raises(cg.GuidanceError, match=r"output `sample` declares no `renoise` prediction \(outputs that do: none\)"):
        cg.Guider("cfg").combine_into(0, 10, None, {"cond": c, "uncond": u}, {"sample": out}, renoise={"sample": noise})
    with pytest.raises(cg.GuidanceError, match=r"renoise `video`: the policy has no such output \(it has: sample\)"):
        cg.Guider("cfg_pp").combine_into(0, 10, None, {"cond": c, "uncond": u}, {"sample": out}, renoise={"video": noise})


def test_renoise_must_not_alias_an_input_or_the_output():
    c, u = pair(torch.float32)
    out = torch.empty(SHAPE)
    with pytest.raises(cg.GuidanceError, match="renoise `sample`"):
        cg.Guider("cfg_pp").combine_into(0, 10, None, {"cond": c, "uncond": u}, {"sample": out}, renoise={"sample": u})
    with pytest.raises(cg.GuidanceError, match="renoise `sample`"):
        cg.Guider("cfg_pp").combine_into(0, 10, None, {"cond": c, "uncond": u}, {"sample": out}, renoise={"sample": out})
