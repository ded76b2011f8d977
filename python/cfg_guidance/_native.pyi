"""Type stubs of the compiled module (python/rust/). Use the package's
public names (`cfg_guidance.Policy`, `cfg_guidance.Guider`, ...); the raw
`Guider` below takes DLPack producers and a raw CUDA stream handle, and is
wrapped by `cfg_guidance.guider.Guider`."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

# Any object with `__dlpack__` and `__dlpack_device__` (torch.Tensor, numpy.ndarray, ...).
Desc = Any

class PolicyError(ValueError):
    """A policy that cannot be loaded: `file:line:col: what is wrong`."""

    origin: Optional[str]
    line: Optional[int]
    col: Optional[int]

class GuidanceError(ValueError):
    """A step that cannot run (missing branch, shape/dtype mismatch, device, layout...)."""

class StepPlan:
    """The plan of one step over `world_size` ranks."""

    step: int
    world_size: int
    active: List[str]
    skipped: List[str]
    owner: Dict[str, int]
    ranks: List[List[str]]
    groups: List[List[List[str]]]
    idle: List[int]
    collective: str
    bytes: int
    gather_bytes: int
    reduce_bytes: int
    gather_sizes: List[int]
    payload: List[List[Tuple[str, str]]]
    def branches_for(self, rank: int) -> List[str]: ...

class Policy:
    """A loaded, validated policy."""

    @staticmethod
    def load(policy: str) -> Policy: ...
    @staticmethod
    def from_text(text: str, origin: str = "<text>") -> Policy: ...
    def with_params(self, params: Dict[str, float]) -> Policy: ...
    def params(self) -> List[Tuple[str, Optional[float]]]: ...
    @property
    def name(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def origin(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def steps(self) -> Optional[int]: ...
    @property
    def branches(self) -> List[str]: ...
    def modifier(self, name: str) -> Tuple[str, Dict[str, object]]:
        """How branch `name` modifies the model: (kind, params), e.g. ("IdentityAttention", {"layers": [1]})."""
        ...
    def branch_specs(self) -> List[Tuple[str, str, str, float]]: ...
    @property
    def outputs(self) -> List[str]: ...
    @property
    def renoise_outputs(self) -> List[str]: ...
    def spaces(self) -> List[Tuple[str, str]]: ...
    @property
    def scales(self) -> List[str]: ...
    @property
    def warnings(self) -> List[str]: ...
    def graph(self, format: str = "dot") -> str: ...
    def plan(
        self,
        world_size: int,
        num_steps: Optional[int] = None,
        sigmas: Optional[Sequence[float]] = None,
        shapes: Optional[Dict[str, Sequence[int]]] = None,
        dtype: str = "bfloat16",
        mode: str = "fast",
    ) -> List[StepPlan]: ...

class Guider:
    def __init__(self, policy: Policy, world_size: int = 1, rank: int = 0, mode: str = "deterministic") -> None: ...
    def start(self) -> None: ...
    @property
    def policy(self) -> Policy: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def mode(self) -> str: ...
    def state(self) -> List[Tuple[str, str]]: ...
    def needed(self, step: int, num_steps: int, sigma: Optional[float] = None) -> List[Tuple[str, List[str]]]: ...
    def plan(
        self, step: int, num_steps: int, sigma: Optional[float], outputs: Sequence[Tuple[str, Sequence[int], str]]
    ) -> StepPlan: ...
    def combine(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        inputs: Sequence[Tuple[str, str, Desc]],
        outputs: Sequence[Tuple[str, Desc]],
        stream: Optional[int] = None,
        renoise: Sequence[Tuple[str, Desc]] = ...,
    ) -> None: ...
    def forms_len(
        self, step: int, num_steps: int, sigma: Optional[float], shapes: Sequence[Tuple[str, Sequence[int]]]
    ) -> int: ...
    def partial_forms(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        inputs: Sequence[Tuple[str, str, Desc]],
        shapes: Sequence[Tuple[str, Sequence[int]]],
        forms: Desc,
        stream: Optional[int] = None,
    ) -> None: ...
    def finish(
        self,
        step: int,
        num_steps: int,
        sigma: Optional[float],
        forms: Desc,
        outputs: Sequence[Tuple[str, Desc]],
        stream: Optional[int] = None,
    ) -> None: ...

def list_policies() -> List[str]: ...
def check(policy: str) -> List[str]: ...
