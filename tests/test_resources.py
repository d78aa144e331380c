"""A user's own worker binary (the README's example, worker/examples/custom_worker.rs) with its
resources: a handler reaches the state it was given at startup, and a task that needs a resource
the worker lacks is named at startup and fails with the reason, stored as Python's RuntimeError,
while the worker carries on."""

import os

import pytest

from support import EXAMPLE_WORKER_BIN


@pytest.fixture
def example_worker(start_worker):
    if not os.path.exists(EXAMPLE_WORKER_BIN):
        pytest.exit(f"{EXAMPLE_WORKER_BIN} is missing: scripts/test.sh builds it (cargo test)", returncode=2)
    return start_worker("-Q", "media", binary=EXAMPLE_WORKER_BIN)


def test_a_handler_reaches_its_resource_and_a_missing_one_fails_with_the_reason(app, example_worker):
    assert ("task reports.tasks.nightly is unavailable on this worker" in example_worker.log()
            and "DATABASE_URL is not set" in example_worker.log())
    ok = app.send_task("media.tasks.thumbnail", args=[42, 320], queue="media")
    assert ok.get(timeout=10) == "thumbs/42-320-q85.jpg"
    missing = app.send_task("reports.tasks.nightly", queue="media")
    with pytest.raises(RuntimeError, match="DATABASE_URL is not set"):
        missing.get(timeout=10)
    assert missing.state == "FAILURE"
    after = app.send_task("media.tasks.thumbnail", kwargs={"image_id": 1, "width": 64, "quality": 90},
                          queue="media")
    assert after.get(timeout=10) == "thumbs/1-64-q90.jpg"
