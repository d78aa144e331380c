#!/usr/bin/env bash
# The run command of the README: starts Redis on 127.0.0.1:6379 if none answers, builds, and runs
# celeriac-beat with the example schedule (beat/schedule.example.toml) in the background and the
# worker (debug build, shared with scripts/test.sh) in the foreground, with the quickstart's
# settings. Flags given here go to the worker and override those. Ctrl-C stops both.
source "$(dirname "$0")/lib.sh"

ensure_redis_running 6379
build_binaries
BROKER="${CELERY_BROKER_URL:-redis://127.0.0.1:6379/0}"
"$CARGO_TARGET_DIR/debug/celeriac-beat" --broker "$BROKER" \
  --schedule "${CELERIAC_BEAT_SCHEDULE:-$ROOT/beat/schedule.example.toml}" --loglevel INFO &
beat=$!
trap 'kill "$beat" 2>/dev/null; wait "$beat" 2>/dev/null' EXIT
"$CARGO_TARGET_DIR/debug/celeriac-worker" \
  --broker "$BROKER" \
  --result-backend "${CELERY_RESULT_BACKEND:-redis://127.0.0.1:6379/1}" \
  --queues default,media --concurrency 8 --hostname 'w1@%h' --loglevel INFO "$@"
