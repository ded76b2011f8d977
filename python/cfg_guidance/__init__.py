"""cfg_guidance: classifier-free guidance policies for PyTorch and NumPy.

A guidance scheme is a RON policy (the `cfg` project's language; see
policies/README.md). This package loads and checks policies, shows their
branch graph and per-rank plan, combines branch predictions step by step
(`Guider`), runs CFG-parallel over a torch.distributed group
(`cfg_guidance.distributed`) and plugs a policy into diffusers' modular
pipelines (`cfg_guidance.diffusers.PolicyGuidance`).

Predictions are read in place (no copy) and results are new tensors of the
same kind, dtype and device: float32, float16 or bfloat16, CPU, contiguous.
"""

from ._native import GuidanceError, Policy, PolicyError, StepPlan, check, list_policies
from .guider import Guider

load = Policy.load

__all__ = ["Guider", "GuidanceError", "Policy", "PolicyError", "StepPlan", "check", "list_policies", "load"]
