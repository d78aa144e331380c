#!/usr/bin/env bash
# The test command of the README: set-up, build, unit, golden-vector and property tests, lints, then
# the interop suite in which real Python Celery drives the worker, once with Celery 5.7 and
# once with Celery 5.3 (the oldest line we serve). Extra arguments go to pytest
# (e.g. scripts/test.sh -k retry); CELERIAC_SKIP_COMPAT=1 skips the Celery 5.3 pass.
source "$(dirname "$0")/lib.sh"

VENV_53="${CELERIAC_VENV_53:-$CACHE/venv-celery5.3}"
ensure_test_tools
ensure_podman
ensure_rabbitmq
ensure_venv
[ -n "${CELERIAC_SKIP_COMPAT:-}" ] || ensure_venv "$ROOT/tests/requirements-celery5.3.txt" "$VENV_53"
build_binaries
say "unit, golden-vector, property, Redis and RabbitMQ client tests"
# The worker turns on the protocol crate's `amqp` feature, so this includes the AMQP client's
# tests against RabbitMQ; they must not skip here.
(cd "$ROOT" && CELERIAC_REQUIRE_AMQP=1 cargo test --locked --workspace)
say "lints: rustfmt, clippy, rustdoc"
(cd "$ROOT" && cargo fmt --all -- --check && cargo clippy --locked --workspace --all-targets -- -D warnings &&
  RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet)
say "deployment files: render, validate, scan and lint (scripts/check_deploy.sh)"
"$ROOT/scripts/check_deploy.sh"
export CELERIAC_WORKER_BIN="$CARGO_TARGET_DIR/debug/celeriac-worker"
export CELERIAC_BEAT_BIN="$CARGO_TARGET_DIR/debug/celeriac-beat"
cd "$ROOT"
venvs=("$VENV")
[ -n "${CELERIAC_SKIP_COMPAT:-}" ] || venvs+=("$VENV_53")
for venv in "${venvs[@]}"; do
  # Tests marked `once` do not depend on the Celery version: the compatibility pass skips them.
  if [ "$venv" = "$VENV" ]; then unset CELERIAC_COMPAT_PASS; else export CELERIAC_COMPAT_PASS=1; fi
  say "interop suite: Python Celery $("$venv/bin/python" -c 'import celery; print(celery.__version__)') against celeriac-worker and celeriac-beat"
  # A whole pass takes under 2 minutes; 15 turn a hang into a clear failure.
  timeout 900 "$venv/bin/python" -m pytest tests -p no:cacheprovider "$@" ||
    { rc=$?; [ "$rc" -ne 124 ] || echo "interop suite timed out" >&2; exit "$rc"; }
done
