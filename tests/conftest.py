"""Shared pytest configuration: fixed hypothesis profile so randomized tests are reproducible."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ternopu",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ternopu")
