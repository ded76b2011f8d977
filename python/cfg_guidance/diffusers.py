"""A diffusers guider backed by a RON policy.

`PolicyGuidance` implements diffusers' `BaseGuidance` interface
(`set_state`, `prepare_inputs`, `prepare_inputs_from_block_state`,
`num_conditions`, `is_conditional`, `forward`), so a diffusers modular
pipeline can take any policy in place of its built-in guider:

    from cfg_guidance.diffusers import PolicyGuidance
    pipe.update_components(guider=PolicyGuidance("apg"))

Each step it asks for the branches the policy needs at that step (windows
and latches applied: a branch that is off is not computed), names them as
diffusers does (`pred_cond`, `pred_uncond`, `pred_cond_skip`,
`pred_cond_seg`; `pred_<branch>` otherwise), and combines
them with the policy's program.

Branches that modify the denoiser get diffusers' own hooks around their
forward (`prepare_models` installs them, `cleanup_models` removes them), as
diffusers' guiders do: `IdentityAttention(layers)` (PAG: attention scores
skipped), `SkipLayers(layers)` (SLG: attention and feed-forward skipped),
`SkipSelfAttention(layers)` (attention skipped) and `BlurQueries(layers,
sigma)` (SEG's query blur), in the block stack `fqn` ("auto" finds it in a
DiT; a UNet needs its name). Modifiers that no hook expresses (another
model, modality isolation, a dropped reference) are the pipeline's to
apply; the adapter combines what it is given.

State: diffusers has no start-of-sampling call and its stateful guiders
(APG's momentum) restart at step 0, so this adapter starts the policy's
operator state at `set_state(step=0, ...)`; pass `restart_at_step_zero=False`
and call `start()` yourself to decide otherwise.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from ._native import GuidanceError
from .guider import Guider

#: Branch names of the library's policies → diffusers' prediction names.
DIFFUSERS_NAMES: Dict[str, str] = {
    "cond": "pred_cond",
    "main": "pred_cond",
    "uncond": "pred_uncond",
    "weak": "pred_uncond",
    "skip": "pred_cond_skip",
    "perturbed": "pred_cond_skip",
    "blurred": "pred_cond_seg",
}


class PolicyGuidance(BaseGuidance):
    """A diffusers guider that runs a cfg policy (library name or `.ron` path)."""

    _input_predictions = ["pred_cond", "pred_uncond"]

    @register_to_config
    def __init__(
        self,
        policy: str = "cfg",
        params: Optional[Dict[str, float]] = None,
        output: Optional[str] = None,
        names: Optional[Dict[str, str]] = None,
        restart_at_step_zero: bool = True,
        enabled: bool = True,
        fqn: str = "auto",
    ):
        self._guider = Guider(policy, params=params)
        self._fqn = fqn
        self._hooks: List[str] = []  # the hooks installed for the branch being computed
        outputs = self._guider.outputs
        if output is None and len(outputs) != 1:
            raise GuidanceError(f"policy `{self._guider.policy.name}` has outputs {outputs}: choose one with output=")
        self._output = output if output is not None else outputs[0]
        if self._output not in outputs:
            raise GuidanceError(f"output `{self._output}`: policy `{self._guider.policy.name}` has outputs {outputs}")
        branches = self._guider.policy.branches
        table = {**DIFFUSERS_NAMES, **(names or {})}
        self._ident = {b: table.get(b, f"pred_{b}") for b in branches}
        self._branch = {v: k for k, v in self._ident.items()}
        if len(self._branch) != len(self._ident):
            raise GuidanceError(f"two branches share a diffusers name: {self._ident}; rename them with names=")
        # Which half of diffusers' (positive, negative) input tuples each branch reads.
        self._tuple_index = {name: 0 if prompt == "positive" else 1 for name, prompt, _, _ in self._guider.policy.branch_specs()}
        self._input_predictions = [self._ident[b] for b in branches]
        self._sigma: Optional[float] = None
        self._restart = restart_at_step_zero
        super().__init__(0.0, 1.0, enabled)

    # diffusers' interface.

    def set_state(self, step: int, num_inference_steps: int, timestep: Any, sigma: Optional[float] = None) -> None:
        """As diffusers; `sigma` is the scheduler's sigma, for policies that need it."""
        super().set_state(step, num_inference_steps, timestep)
        self._sigma = sigma
        if step == 0 and self._restart:
            self._guider.start()

    def start(self) -> None:
        """Restarts the policy's operator state (APG momentum, zero-init, latches)."""
        self._guider.start()

    def prepare_inputs(self, data: Dict[str, Any]) -> List[Any]:
        return [self._prepare_batch(data, self._tuple_index[b], self._ident[b]) for b in self._active()]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: Dict[str, Any]) -> List[Any]:
        return [
            self._prepare_batch_from_block_state(input_fields, data, self._tuple_index[b], self._ident[b])
            for b in self._active()
        ]

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        """Before each branch's forward (in `prepare_inputs` order): its modifier's hooks."""
        super().prepare_models(denoiser)
        self.cleanup_models(denoiser)
        active = self._active()
        i = self._count_prepared - 1
        if not (0 <= i < len(active)) or not self._enabled:
            return
        branch = active[i]
        kind, params = self._guider.policy.modifier(branch)
        self._hooks = _apply_hooks(denoiser, kind, params, self._fqn, f"cfg_guidance_{branch}")

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        """After each branch's forward: removes the hooks `prepare_models` installed."""
        if self._hooks:
            from diffusers.hooks import HookRegistry

            registry = HookRegistry.check_if_exists_or_initialize(denoiser)
            for name in self._hooks:
                registry.remove_hook(name, recurse=True)
            self._hooks = []

    @property
    def num_conditions(self) -> int:
        return len(self._active())

    @property
    def is_conditional(self) -> bool:
        active = self._active()
        i = self._count_prepared - 1
        return 0 <= i < len(active) and self._tuple_index[active[i]] == 0

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> GuiderOutput:
        """Combines the step's predictions, by diffusers name (positionally: in `num_conditions` order)."""
        preds: Dict[str, torch.Tensor] = dict(zip((self._ident[b] for b in self._active()), args))
        preds.update({k: v for k, v in kwargs.items() if v is not None})
        unknown = [k for k in preds if k not in self._branch]
        if unknown:
            raise GuidanceError(f"predictions {unknown}: this guider reads {sorted(self._branch)}")
        cond = preds.get("pred_cond")
        if not self._enabled:
            return GuiderOutput(pred=cond, pred_cond=cond, pred_uncond=preds.get("pred_uncond"))
        step, steps = self._position()
        by_branch = {self._branch[k]: {self._output: v} for k, v in preds.items()}
        like = next(iter(preds.values()), None)
        if like is None:
            raise GuidanceError("forward: no prediction given")
        out = {self._output: torch.empty(like.shape, dtype=like.dtype, device=like.device)}
        self._guider.combine_into(step, steps, self._sigma, _flat(by_branch), out)
        return GuiderOutput(pred=out[self._output], pred_cond=cond, pred_uncond=preds.get("pred_uncond"))

    # Helpers.

    def _position(self) -> tuple:
        if self._step is None or self._num_inference_steps is None:
            raise GuidanceError("call set_state(step, num_inference_steps, timestep) before preparing or combining")
        return self._step, self._num_inference_steps

    def _active(self) -> List[str]:
        """The branches to compute at this step, in declaration order; at a step
        that needs none (a zero-init step), the first positive branch, for the shape."""
        if not self._enabled:
            return [self._first_positive()]
        if self._step is None or self._num_inference_steps is None:
            # Before set_state (a repr, a config dump): every declared branch.
            return list(self._guider.policy.branches)
        step, steps = self._position()
        needed = set(self._guider.needed(step, steps, self._sigma).get(self._output, []))
        active = [b for b in self._guider.policy.branches if b in needed]
        return active or [self._first_positive()]

    def _first_positive(self) -> str:
        for b, i in self._tuple_index.items():
            if i == 0:
                return b
        return self._guider.policy.branches[0]


def _apply_hooks(denoiser: torch.nn.Module, kind: str, params: Mapping[str, Any], fqn: str, name: str) -> List[str]:
    """Installs diffusers' hooks for a modifier; returns their names (none for
    modifiers no hook expresses)."""
    from diffusers.hooks import LayerSkipConfig
    from diffusers.hooks.layer_skip import _apply_layer_skip_hook

    skips = {
        # (skip_attention, skip_attention_scores, skip_ff), as diffusers' PAG and SLG guiders configure them.
        "IdentityAttention": (False, True, False),
        "SkipLayers": (True, False, True),
        "SkipSelfAttention": (True, False, False),
    }
    if kind in skips:
        attention, scores, ff = skips[kind]
        config = LayerSkipConfig(
            indices=list(params["layers"]), fqn=fqn, skip_attention=attention, skip_attention_scores=scores, skip_ff=ff
        )
        _apply_layer_skip_hook(denoiser, config, name=name)
        return [name]
    if kind == "BlurQueries":
        from diffusers.hooks.smoothed_energy_guidance_utils import (
            SmoothedEnergyGuidanceConfig,
            _apply_smoothed_energy_guidance_hook,
        )

        config = SmoothedEnergyGuidanceConfig(indices=list(params["layers"]), fqn=fqn)
        _apply_smoothed_energy_guidance_hook(denoiser, config, float(params["sigma"]), name=name)
        return [name]
    if kind == "Nag":
        # Running the cond branch without it would silently drop the guidance.
        raise GuidanceError(
            f"branch `{name.removeprefix('cfg_guidance_')}`: NAG runs inside the model's attention and diffusers "
            "has no hook for it; apply it in the pipeline (Policy.modifier gives its parameters)"
        )
    return []


def _flat(by_branch: Mapping[str, Mapping[str, Any]]) -> Dict[tuple, Any]:
    return {(b, o): t for b, outs in by_branch.items() for o, t in outs.items()}
