"""Shared helpers of the cfg_guidance tests."""

import numpy as np
import pytest


def assert_within_ulps(want, have, inputs, what, ulps=8):
    """Per element within `ulps` f32 ulps of the largest magnitude among the
    step's inputs and expected output (torch rounds `u + s·(c − u)` op by op;
    the policy folds weights and uses fma)."""
    want = np.asarray(want, dtype=np.float32)
    have = np.asarray(have, dtype=np.float32)
    assert want.shape == have.shape, f"{what}: shape {have.shape}, expected {want.shape}"
    scale = max([float(np.abs(want).max())] + [float(np.abs(np.asarray(x, dtype=np.float32)).max()) for x in inputs])
    tolerance = ulps * np.finfo(np.float32).eps * scale
    err = float(np.abs(want - have).max())
    assert err <= tolerance, f"{what}: max |diff| {err:.3e} > {ulps} ulps of {scale:.3e} ({tolerance:.3e})"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
