"""Test-wide settings: implicit rank promotion is an error (it hides [B] vs [B, 1] bugs)."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
