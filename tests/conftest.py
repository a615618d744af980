"""Test-suite wide settings.

* Under ``CI=true`` a skipped test (``pytest.skip``, ``importorskip``, a skip marker, an
  ``xfail``) fails the run: CI must never go green by not running a test. Locally skips stay skips.
* ``DIFFJAX_TEST_JAX_CACHE=DIR`` turns on JAX's persistent compilation cache in DIR for the tests
  and the subprocesses they start (off by default: see docs/mutation.md, "suite time").
"""
import os

import pytest

_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

if os.environ.get("DIFFJAX_TEST_JAX_CACHE"):   # before any test module imports jax
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["DIFFJAX_TEST_JAX_CACHE"])
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def _fail_skip(report, what: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else getattr(report, "wasxfail", "")
    report.outcome = "failed"
    report.longrepr = f"{what} was skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _CI and (report.skipped or hasattr(report, "wasxfail")):
        _fail_skip(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped:
        _fail_skip(report, collector.nodeid)
