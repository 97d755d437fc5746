"""The fleet of five enrolled 6.1 nodes and the releases every rollout test starts from;
the rollout driver's clock is off here (tests run it themselves: `driver.tick()`), so that
a tick never lands in the middle of what a test checks."""

from typing import Any

import pytest

from tests.rollouts.test_rollout_api import fleet  # noqa: F401


@pytest.fixture
def app_overrides(app_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**app_overrides, "rollout_tick": 0}
