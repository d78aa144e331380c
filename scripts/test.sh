#!/usr/bin/env bash
# The test command of the README: set-up, build, unit and golden-vector tests, then the interop
# suite in which real Python Celery drives the worker. Extra arguments go to pytest
# (e.g. scripts/test.sh -k retry).
source "$(dirname "$0")/lib.sh"

ensure_test_tools
ensure_venv
build_binaries
say "unit, golden-vector and property tests"
(cd "$ROOT" && cargo test --locked --workspace)
say "interop suite (Python Celery $("$VENV/bin/python" -c 'import celery; print(celery.__version__)') against celeriac-worker)"
export CELERIAC_WORKER_BIN="$CARGO_TARGET_DIR/debug/celeriac-worker"
cd "$ROOT" && exec "$VENV/bin/python" -m pytest tests "$@"
