"""The diffusers adapter modifies the denoiser for the branches that ask for
it, with diffusers' own hooks, as diffusers' guiders do: on a tiny DiT, the
adapter's perturbed predictions are diffusers' guiders' perturbed
predictions, bit for bit, and the hooks are gone afterwards.
(A tiny DiT: diffusers 0.42.1's layer-skip hooks do not know SD3's joint
attention processor.)
"""

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.guiders import PerturbedAttentionGuidance, SkipLayerGuidance
from diffusers.hooks import LayerSkipConfig
from diffusers.hooks.smoothed_energy_guidance_utils import (
    SmoothedEnergyGuidanceConfig,
    _apply_smoothed_energy_guidance_hook,
)

from cfg_guidance.diffusers import PolicyGuidance

STEPS, STEP = 28, 3  # inside the PAG/SLG window int(0.01·28) < i < int(0.2·28)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        num_layers=10,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([500]), class_labels=torch.tensor([3]))


def predictions(guider, model, inputs):
    """Each condition's forward, between prepare_models and cleanup_models, as a
    modular pipeline's denoise loop calls them (the same inputs for every
    branch, so that only the hooks make them differ)."""
    guider.set_state(step=STEP, num_inference_steps=STEPS, timestep=inputs["timestep"])
    out = []
    with torch.no_grad():
        for _ in range(guider.num_conditions):
            guider.prepare_models(model)
            out.append(model(**inputs).sample)
            guider.cleanup_models(model)
    return out


def plain(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize(
    "policy,theirs",
    [
        ("pag", lambda: PerturbedAttentionGuidance(perturbed_guidance_layers=[1])),
        # diffusers 0.42.1 turns `skip_layer_guidance_layers=[7, 8, 9]` into one
        # config per layer with an int `indices`, which its hook then fails on
        # (`len(int)`); its other documented form, an explicit config, works.
        ("skip_layer", lambda: SkipLayerGuidance(skip_layer_config=LayerSkipConfig(indices=[7, 8, 9], fqn="auto"))),
    ],
)
def test_layer_hooks_match_diffusers_guiders(model, inputs, policy, theirs):
    ours = predictions(PolicyGuidance(policy), model, inputs)
    want = predictions(theirs(), model, inputs)
    assert len(ours) == len(want) == 3
    base = plain(model, inputs)
    for i, (a, b) in enumerate(zip(ours, want)):
        assert torch.equal(a, b), f"{policy}: condition {i} differs from diffusers' guider"
    assert torch.equal(ours[0], base) and torch.equal(ours[1], base), f"{policy}: cond/uncond must run unmodified"
    assert not torch.equal(ours[2], base), f"{policy}: the perturbed branch's hook had no effect"
    assert torch.equal(plain(model, inputs), base), f"{policy}: a hook was left installed"


def test_query_blur_hook_matches_diffusers_hook(model, inputs):
    """diffusers 0.42.1's SmoothedEnergyGuidance never installs its hooks
    (its prepare_models does not count calls, so `_count_prepared > 1` never
    holds): the reference here is diffusers' hook applied directly."""
    ours = predictions(PolicyGuidance("seg"), model, inputs)
    _apply_smoothed_energy_guidance_hook(model, SmoothedEnergyGuidanceConfig(indices=[7, 8, 9]), 9999999.0, name="ref")
    try:
        want = plain(model, inputs)
    finally:
        from diffusers.hooks import HookRegistry

        HookRegistry.check_if_exists_or_initialize(model).remove_hook("ref", recurse=True)
    base = plain(model, inputs)
    assert torch.equal(ours[-1], want), "seg: the blurred branch differs from diffusers' hook"
    assert not torch.equal(ours[-1], base)
    assert torch.equal(ours[0], base)


def test_modifier_of_each_branch():
    p = PolicyGuidance("pag")._guider.policy
    assert p.modifier("perturbed") == ("IdentityAttention", {"layers": [1]})
    assert p.modifier("cond") == ("None", {})
    kind, params = PolicyGuidance("seg")._guider.policy.modifier("blurred")
    assert kind == "BlurQueries" and params["layers"] == [7, 8, 9] and params["sigma"] == 9999999.0
    with pytest.raises(ValueError, match="no such branch"):
        p.modifier("nope")
