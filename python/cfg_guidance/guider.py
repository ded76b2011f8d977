"""The guider: a policy's per-step combine on torch tensors or NumPy arrays,
with its operator state (APG momentum, zero-init counters, adaptive latches).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _native
from ._tensors import empty_like, stream_of
from ._native import GuidanceError, Policy, StepPlan

Predictions = Mapping[str, Any]


class Guider:
    """One rank's guider for a policy.

    >>> g = Guider("cfg")
    >>> g.start()
    >>> out = g.combine(0, 30, None, {"cond": c, "uncond": u})["sample"]

    `combine` reads the predictions in place and returns new tensors of the
    same kind (torch in, torch out; NumPy in, NumPy out), dtype and device.
    """

    def __init__(
        self,
        policy: Union[Policy, str],
        *,
        params: Optional[Mapping[str, float]] = None,
        world_size: int = 1,
        rank: int = 0,
        mode: str = "deterministic",
    ) -> None:
        if isinstance(policy, str):
            policy = Policy.load(policy)
        if params:
            policy = policy.with_params(dict(params))
        self._native = _native.Guider(policy, world_size, rank, mode)
        self._policy = policy
        self._outputs: List[str] = list(policy.outputs)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def outputs(self) -> List[str]:
        return list(self._outputs)

    @property
    def rank(self) -> int:
        return self._native.rank

    @property
    def world_size(self) -> int:
        return self._native.world_size

    @property
    def mode(self) -> str:
        return self._native.mode

    def start(self) -> None:
        """Starts a sampling run: resets every stateful operator."""
        self._native.start()

    def state(self) -> List[Tuple[str, str]]:
        """The operator state, for inspection."""
        return self._native.state()

    def needed(self, step: int, num_steps: int, sigma: Optional[float] = None) -> Dict[str, List[str]]:
        """Per output, the branches the step reads (windows and latches applied)."""
        return dict(self._native.needed(step, num_steps, sigma))

    def branches(self, step: int, num_steps: int, sigma: Optional[float] = None) -> List[str]:
        """Every branch the step needs, sorted: the model calls to make."""
        return sorted({b for bs in self.needed(step, num_steps, sigma).values() for b in bs})

    def combine(
        self, step: int, num_steps: int, sigma: Optional[float], predictions: Predictions
    ) -> Dict[str, Any]:
        """The guided prediction of each output at `step`.

        `predictions` maps branch names to tensors; for a policy with several
        outputs, to `{output: tensor}` dicts. Branches the step does not need
        may be given and are ignored. Operator state advances.
        """
        flat = self._flatten(predictions)
        outputs = {o: empty_like(self._like(o, flat, step, num_steps, sigma)) for o in self._outputs}
        self.combine_into(step, num_steps, sigma, flat, outputs)
        return outputs

    def combine_with_renoise(
        self, step: int, num_steps: int, sigma: Optional[float], predictions: Predictions
    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """CFG++: `combine`'s guided outputs, and the re-noising prediction of
        every output that declares one (`renoise` in the policy, e.g. the
        unconditional prediction), which the sampler re-noises with in place
        of the guided one. Operator state advances once."""
        flat = self._flatten(predictions)
        outputs = {o: empty_like(self._like(o, flat, step, num_steps, sigma)) for o in self._outputs}
        renoise = {o: empty_like(outputs[o]) for o in self._policy.renoise_outputs}
        self.combine_into(step, num_steps, sigma, flat, outputs, renoise=renoise)
        return outputs, renoise

    def combine_into(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        predictions: Union[Predictions, Dict[Tuple[str, str], Any]],
        outputs: Mapping[str, Any],
        renoise: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """`combine` into tensors the caller allocated (contiguous, the
        predictions' dtype); `renoise` maps outputs that declare a re-noising
        prediction to tensors that receive it."""
        flat = predictions if _is_flat(predictions) else self._flatten(predictions)
        inputs = [(b, o, t) for (b, o), t in flat.items()]
        outs = list(outputs.items())
        stream = stream_of(next(iter(outputs.values()), None))
        self._native.combine(step, num_steps, sigma, inputs, outs, stream, list((renoise or {}).items()))

    # CFG-parallel pieces (see cfg_guidance.distributed for the one-call helper).

    def plan(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        shapes: Mapping[str, Sequence[int]],
        dtype: Any,
    ) -> StepPlan:
        """This step's plan over the guider's ranks: who computes which branch,
        idle ranks, the collective and its bytes. Changes no state."""
        from ._tensors import dtype_name

        spec = [(o, list(shapes[o]), dtype_name(dtype)) for o in self.outputs if o in shapes]
        return self._native.plan(step, num_steps, sigma, spec)

    def forms_len(self, step: int, num_steps: int, sigma: Optional[float], shapes: Mapping[str, Sequence[int]]) -> int:
        """float32 values of this step's reduced buffer (every linear form of every output)."""
        return self._native.forms_len(step, num_steps, sigma, [(o, list(s)) for o, s in shapes.items()])

    def partial_forms(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        local: Union[Predictions, Dict[Tuple[str, str], Any]],
        shapes: Mapping[str, Sequence[int]],
        forms: Any,
    ) -> None:
        """Writes this rank's weighted f32 partial forms of its `local`
        predictions into `forms` (float32, `forms_len` values), for an all-reduce."""
        flat = local if _is_flat(local) else self._flatten(local)
        inputs = [(b, o, t) for (b, o), t in flat.items()]
        shape_list = [(o, list(s)) for o, s in shapes.items()]
        stream = stream_of(forms)
        self._native.partial_forms(step, num_steps, sigma, inputs, shape_list, forms, stream)

    def finish(self, step: int, num_steps: int, sigma: Optional[float], forms: Any, outputs: Mapping[str, Any]) -> None:
        """Finishes an all-reduce step from the summed `forms` into `outputs`. State advances."""
        outs = list(outputs.items())
        self._native.finish(step, num_steps, sigma, forms, outs, stream_of(forms))

    # Helpers.

    def _flatten(self, predictions: Predictions) -> Dict[Tuple[str, str], Any]:
        """`{(branch, output): tensor}` from `{branch: tensor}` or `{branch: {output: tensor}}`."""
        if not isinstance(predictions, Mapping):
            raise TypeError(f"predictions: expected a dict of branch name -> tensor, got {type(predictions).__name__}")
        outputs = self._outputs
        flat: Dict[Tuple[str, str], Any] = {}
        for branch, value in predictions.items():
            if isinstance(value, Mapping):
                for output, t in value.items():
                    flat[(branch, output)] = t
            elif len(outputs) == 1:
                flat[(branch, outputs[0])] = value
            else:
                raise GuidanceError(
                    f"branch `{branch}`: policy `{self.policy.name}` has outputs {outputs}: "
                    "give a dict {output: tensor} per branch"
                )
        return flat

    def _like(self, output: str, flat: Mapping[Tuple[str, str], Any], step: int, num_steps: int, sigma) -> Any:
        """A prediction of `output` to allocate its result like (the native
        side then checks that every needed one agrees with it)."""
        for (_, o), t in flat.items():
            if o == output:
                return t
        need = ", ".join(f"`{b}`" for b in self.needed(step, num_steps, sigma).get(output, [])) or "none"
        raise GuidanceError(
            f"step {step}, output `{output}`: no prediction was given for it (needed: {need}; "
            "at a step that needs none, give any branch's prediction for its shape)"
        )


def _is_flat(predictions: Mapping) -> bool:
    """Whether the keys are `(branch, output)` pairs (the first key tells)."""
    return isinstance(next(iter(predictions), None), tuple)
