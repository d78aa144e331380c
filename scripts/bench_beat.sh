#!/usr/bin/env bash
# The beat benchmark: celeriac-beat (release build) on a private Redis that the driver starts on a
# free loopback port (never the Redis on 6379): fire-time lateness of 200 x every=1 + 20 x crontab
# minute=* entries over 30 s (from beat's log and from message arrivals), idle CPU and RSS with
# 10 000 entries that do not fire, start-up to leadership, and the time for 1 000 / 10 000 entries
# due at one instant to be in Redis; Python Celery beat 5.7 (PersistentScheduler) for the same
# bursts at a minute boundary, and its idle CPU. Prints a table and a final JSON line; takes 3 to 5
# minutes (it waits for minute boundaries). The driver is tests/bench/beat_bench.py; flags go to it:
#   scripts/bench_beat.sh [--lateness-entries N] [--lateness-seconds S] [--idle-entries N]
#                         [--burst 1000,10000] [--python 1000,10000] [--python-window S]   (--help for all)
# Logs are kept in the printed folder when the run fails, or when BENCH_KEEP=1.
source "$(dirname "$0")/lib.sh"

ensure_redis_installed
ensure_venv
for a in "$@"; do
  case "$a" in -h | --help) exec "$VENV/bin/python" "$ROOT/tests/bench/beat_bench.py" --help ;; esac
done
build_binaries --release
BIN="$CARGO_TARGET_DIR/release/celeriac-beat"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-bench-beat.XXXXXX")"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # What the driver could not stop (it was killed): beat processes by their process groups, and
  # its redis-server, by the ids it recorded.
  if [ -s "$WORK/procs.pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$WORK/procs.pids"
  fi
  if [ -s "$WORK/redis.pid" ]; then
    pid="$(cat "$WORK/redis.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    echo "bench: beat and redis logs kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$VENV/bin/python" -u "$ROOT/tests/bench/beat_bench.py" --beat-bin "$BIN" --work-dir "$WORK" "$@"
