"""diffusers' own guiders vs the policy of the same scheme, step by step.

For every guider diffusers 0.42.1 ships whose scheme the library has, both
are driven as a modular pipeline drives a guider (`set_state`,
`prepare_inputs`, then `forward` on one prediction per prepared batch) over
20 steps of seeded random CPU tensors, with state carried across steps
(APG's momentum, CFG-Zero*'s zero-init step). They must prepare the same
batches at every step (windows turn branches off alike) and agree within 8
f32 ulps; `Guider.combine` on the same predictions must give the adapter's
bits. Not in the library, so not compared: APG-Mix, FDG, TCFG.
"""

import numpy as np
import pytest
import torch
from diffusers import guiders as dg

import cfg_guidance as cg
from cfg_guidance.diffusers import PolicyGuidance

from conftest import assert_within_ulps

STEPS = 20
SHAPE = (2, 16, 8)


def apg():
    return dg.AdaptiveProjectedGuidance(
        guidance_scale=7.5, adaptive_projected_guidance_momentum=-0.5, adaptive_projected_guidance_rescale=15.0, eta=0.0
    )


LTX2_NAMES = {"perturbed": "pred_cond_stg", "isolated": "pred_cond_modality"}

# (test id, diffusers guider factory, policy, adapter options, shape)
CASES = [
    ("cfg", lambda: dg.ClassifierFreeGuidance(guidance_scale=7.5), "cfg", {}, SHAPE),
    ("std_rescale", lambda: dg.ClassifierFreeGuidance(guidance_scale=7.5, guidance_rescale=0.7), "std_rescale", {}, SHAPE),
    ("zero_star", lambda: dg.ClassifierFreeZeroStarGuidance(guidance_scale=7.5, zero_init_steps=1), "zero_star", {}, SHAPE),
    ("apg", apg, "apg", {}, SHAPE),
    ("magnitude_aware", lambda: dg.MagnitudeAwareGuidance(guidance_scale=10.0, alpha=8.0), "magnitude_aware", {}, SHAPE),
    (
        "skip_layer",
        lambda: dg.SkipLayerGuidance(
            guidance_scale=7.0,
            skip_layer_guidance_scale=2.8,
            skip_layer_guidance_start=0.01,
            skip_layer_guidance_stop=0.2,
            skip_layer_guidance_layers=[7, 8, 9],
        ),
        "skip_layer",
        {},
        SHAPE,
    ),
    (
        "pag",
        lambda: dg.PerturbedAttentionGuidance(
            guidance_scale=7.5,
            perturbed_guidance_scale=2.8,
            perturbed_guidance_start=0.01,
            perturbed_guidance_stop=0.2,
            perturbed_guidance_layers=[1],
        ),
        "pag",
        {},
        SHAPE,
    ),
    (
        "seg",
        lambda: dg.SmoothedEnergyGuidance(
            guidance_scale=7.5,
            seg_guidance_scale=2.8,
            seg_blur_sigma=9999999.0,
            seg_guidance_start=0.0,
            seg_guidance_stop=1.0,
            seg_guidance_layers=[7, 8, 9],
        ),
        "seg",
        {},
        SHAPE,
    ),
    ("autoguidance", lambda: dg.AutoGuidance(guidance_scale=2.1, auto_guidance_layers=[1], dropout=1.0), "autoguidance", {}, SHAPE),
    # One LTX-2 guider per modality; their rescale is per sample, the policy's over the whole tensor: batch 1.
    (
        "ltx2_video",
        lambda: dg.LTX2Guidance(guidance_scale=3.0, stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7),
        "ltx2",
        {"output": "video", "names": LTX2_NAMES},
        (1, 32, 8),
    ),
    (
        "ltx2_audio",
        lambda: dg.LTX2Guidance(guidance_scale=7.0, stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7),
        "ltx2",
        {"output": "audio", "names": LTX2_NAMES},
        (1, 32, 8),
    ),
]


def identifiers(batches):
    return [b.__guidance_identifier__ for b in batches]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_adapter_and_guider_match_diffusers(case):
    name, make, policy, options, shape = case
    theirs = make()
    ours = PolicyGuidance(policy, **options)
    direct = cg.Guider(policy)
    output = options.get("output", "sample")
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    # LTX-2 indexes four inputs (one per pass); the positive prompt feeds all but uncond.
    data = {"prompt_embeds": (torch.zeros(1), torch.ones(1), torch.zeros(1), torch.zeros(1))}
    direct.start()
    for step in range(STEPS):
        timestep = torch.tensor(1000 - 50 * step)
        theirs.set_state(step=step, num_inference_steps=STEPS, timestep=timestep)
        ours.set_state(step=step, num_inference_steps=STEPS, timestep=timestep)
        their_batches = theirs.prepare_inputs(data)
        our_batches = ours.prepare_inputs(data)
        if name == "zero_star" and step == 0:
            # The zero-init step needs no prediction: the policy computes only
            # one branch, for the shape; diffusers computes both and drops them.
            assert identifiers(our_batches) == ["pred_cond"]
        else:
            assert identifiers(our_batches) == identifiers(their_batches), f"step {step}"
            assert ours.num_conditions == theirs.num_conditions
        # The negative prompt goes to uncond, the positive to the others.
        for b in our_batches:
            want = 1.0 if b.__guidance_identifier__ == "pred_uncond" and name != "autoguidance" else 0.0
            assert float(b.prompt_embeds) == want, (step, b.__guidance_identifier__)
        base = torch.randn(shape, generator=gen)
        preds = {}
        for ident in identifiers(their_batches):
            # Correlated branches, as real cond/uncond predictions are.
            preds[ident] = base if ident == "pred_cond" else base + 0.3 * torch.randn(shape, generator=gen)
        want = theirs(_states(preds))[0]
        got = ours(_states({k: preds[k] for k in identifiers(our_batches)}))[0]
        assert_within_ulps(want, got, preds.values(), f"{name} step {step}")
        assert got.dtype == torch.float32 and got.shape == want.shape
        by_branch = {ours._branch[k]: preds[k] for k in identifiers(our_batches)}
        # Every output of the policy from these predictions; this one must be the adapter's.
        same = direct.combine(step, STEPS, None, {b: {o: t for o in direct.outputs} for b, t in by_branch.items()})
        assert torch.equal(same[output], got), f"{name} step {step}: Guider.combine differs from the adapter"


def _states(preds):
    """The prepared batches with their predictions, as a pipeline hands them back."""
    from diffusers.modular_pipelines.modular_pipeline import BlockState

    out = []
    for ident, t in preds.items():
        s = BlockState(noise_pred=t)
        setattr(s, "__guidance_identifier__", ident)
        out.append(s)
    return out


def test_the_adapter_keeps_diffusers_config_machinery():
    g = PolicyGuidance("apg", params={"scale": 5.0})
    assert g.config.policy == "apg"
    again = g.new()
    assert isinstance(again, PolicyGuidance) and again.config.params == {"scale": 5.0}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trips(dtype):
    """f16/bf16 in, same dtype out: the f32 result rounded to nearest even."""
    gen = torch.Generator().manual_seed(7)
    g = cg.Guider("cfg")
    c = torch.randn(SHAPE, generator=gen).to(dtype)
    u = torch.randn(SHAPE, generator=gen).to(dtype)
    out = g.combine(0, 10, None, {"cond": c, "uncond": u})["sample"]
    assert out.dtype == dtype and out.shape == c.shape
    exact = u.double() + 7.5 * (c.double() - u.double())
    want = exact.float().to(dtype)
    # One rounding of the f32 result: within one ulp of the exactly rounded value.
    diff = (out.float() - want.float()).abs()
    ulp = (want.float().abs() * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10)).clamp_min(1e-30)
    assert bool((diff <= ulp).all())
    # The f32 path, rounded: the same bits.
    f32 = g.combine(0, 10, None, {"cond": c.float(), "uncond": u.float()})["sample"]
    assert torch.equal(out, f32.to(dtype))


def test_numpy_in_numpy_out(rng):
    g = cg.Guider("std_rescale")
    c = rng.standard_normal(SHAPE, dtype=np.float32)
    u = rng.standard_normal(SHAPE, dtype=np.float32)
    out = g.combine(0, 10, None, {"cond": c, "uncond": u})["sample"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    torch_out = g.combine(0, 10, None, {"cond": torch.from_numpy(c), "uncond": torch.from_numpy(u)})["sample"]
    assert isinstance(torch_out, torch.Tensor)
    assert np.array_equal(out, torch_out.numpy())
    f16 = g.combine(0, 10, None, {"cond": c.astype(np.float16), "uncond": u.astype(np.float16)})["sample"]
    assert f16.dtype == np.float16


def test_prepare_inputs_from_block_state_picks_as_diffusers_does():
    from diffusers.modular_pipelines.modular_pipeline import BlockState

    state = BlockState(prompt_embeds=torch.zeros(1), negative_prompt_embeds=torch.ones(1))
    fields = {"prompt_embeds": ("prompt_embeds", "negative_prompt_embeds")}
    theirs, ours = dg.ClassifierFreeGuidance(guidance_scale=7.5), PolicyGuidance("cfg")
    for g in (theirs, ours):
        g.set_state(step=0, num_inference_steps=10, timestep=torch.tensor(999))
    want = [(b.__guidance_identifier__, float(b.prompt_embeds)) for b in theirs.prepare_inputs_from_block_state(state, fields)]
    got = [(b.__guidance_identifier__, float(b.prompt_embeds)) for b in ours.prepare_inputs_from_block_state(state, fields)]
    assert got == want == [("pred_cond", 0.0), ("pred_uncond", 1.0)]
    ours.prepare_models(None)
    assert ours.is_conditional
    ours.prepare_models(None)
    assert not ours.is_conditional


def test_repr_before_set_state_and_forward_needs_it():
    g = PolicyGuidance("skip_layer")
    assert "num_conditions: 3" in repr(g)
    with pytest.raises(cg.GuidanceError, match="set_state"):
        g.forward(pred_cond=torch.zeros(2), pred_uncond=torch.zeros(2))
