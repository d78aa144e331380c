#!/usr/bin/env bash
# The thumbnail benchmark (issue 6): celeriac-worker's media.thumbnail (release build) against the
# same task in Python (tests/bench/pythumbs.py: Pillow's Image.thumbnail path, boto3, PyMySQL) on
# a Python Celery 5.7 prefork worker (-c = CPUs; celeriac-worker gets --concurrency 2 x CPUs, its
# CPU pool one decode per CPU), both making the thumbnails of the same 200
# photos of 12 MP, one after the other in the same run, on the same private services: a Redis
# started here on a free loopback port, and a MariaDB and the moto S3 server that the driver
# starts (never the system's). The photos are generated once into ~/.cache/celeriac/bench-photos.
# Prints time, photos/s and peak RSS per worker, the ratios, where the time goes, and a final
# JSON line. The driver is tests/bench/thumbnail_bench.py; flags go to it:
#   scripts/bench_thumbnails.sh [--photos N] [--only python|celeriac] [--concurrency C]
#                               [--rounds R] [--sizes 128,512] [--no-profile] [--keep]  (--help for all)
# Logs, the database and the moto log are kept in the printed folder when the run fails, or with
# --keep (or BENCH_KEEP=1).
source "$(dirname "$0")/lib.sh"

ensure_redis_installed
have_mariadb_server || apt_install mariadb-server
ensure_venv
only=""
prev=""
for a in "$@"; do
  case "$a" in
    -h | --help) exec "$VENV/bin/python" "$ROOT/tests/bench/thumbnail_bench.py" --help ;;
    --keep) BENCH_KEEP=1 ;;
    --only=*) only="${a#--only=}" ;;
  esac
  [ "$prev" = "--only" ] && only="$a"
  prev="$a"
done
if [ "$only" = "python" ]; then
  BIN="${CELERIAC_WORKER_BIN:-$CARGO_TARGET_DIR/release/celeriac-worker}"  # not run
else
  ensure_rust
  command -v cc >/dev/null || apt_install build-essential
  say "building celeriac-worker (cargo build --release) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --locked --release -p celeriac-worker)
  BIN="$CARGO_TARGET_DIR/release/celeriac-worker"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-thumbs.XXXXXX")"
REDIS_PID=""
PORT=""

kill_groups() {
  local pid
  [ -s "$1" ] || return 0
  while read -r pid; do
    [ -n "$pid" ] || continue
    kill -TERM -- "-$pid" 2>/dev/null || true
  done <"$1"
  sleep 1
  while read -r pid; do
    [ -n "$pid" ] || continue
    kill -KILL -- "-$pid" 2>/dev/null || true
  done <"$1"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # What the driver could not stop (it was killed): workers, then moto and MariaDB, by recorded id.
  kill_groups "$WORK/workers.pids"
  kill_groups "$WORK/services.pids"
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    echo "bench: worker, moto, mariadb and redis logs kept in $WORK" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A private redis-server on a free loopback port, no persistence.
for attempt in 1 2 3 4 5; do
  PORT="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$WORK" --logfile "$WORK/redis.log" \
    --save "" --appendonly no --daemonize no &
  REDIS_PID=$!
  for _ in $(seq 50); do
    redis-cli -p "$PORT" ping >/dev/null 2>&1 && break
    kill -0 "$REDIS_PID" 2>/dev/null || break
    sleep 0.1
  done
  if redis-cli -p "$PORT" ping >/dev/null 2>&1; then break; fi
  kill "$REDIS_PID" 2>/dev/null || true
  wait "$REDIS_PID" 2>/dev/null || true
  REDIS_PID=""
  [ "$attempt" -lt 5 ] || { echo "bench: could not start redis-server; see $WORK/redis.log" >&2; exit 1; }
done
say "private redis-server (pid $REDIS_PID) on 127.0.0.1:$PORT"

"$VENV/bin/python" -u "$ROOT/tests/bench/thumbnail_bench.py" --port "$PORT" --worker-bin "$BIN" --work-dir "$WORK" "$@"
