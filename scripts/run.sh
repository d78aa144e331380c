#!/usr/bin/env bash
# The run command of the README: starts Redis on 127.0.0.1:6379 if none answers, builds, and runs
# the worker (debug build, shared with scripts/test.sh) against it with the quickstart's settings.
# Flags given here override those.
source "$(dirname "$0")/lib.sh"

ensure_redis_running 6379
build_binaries
exec "$CARGO_TARGET_DIR/debug/celeriac-worker" \
  --broker "${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}" \
  --result-backend "${CELERY_RESULT_BACKEND:-redis://127.0.0.1:6379/1}" \
  --queues default,media --concurrency 8 --hostname 'w1@%h' --loglevel INFO "$@"
