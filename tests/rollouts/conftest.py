"""The fleet of five enrolled 6.1 nodes and the releases every rollout test starts from."""

from tests.rollouts.test_rollout_api import fleet  # noqa: F401
