#!/usr/bin/env bash
# The benchmark: celeriac-worker (release build) against Python Celery 5.7 (prefork -c 2, Celery's
# defaults otherwise), both draining the same pre-filled queue of celeriac.test.add tasks on a
# private Redis started here on a free loopback port (never the Redis on 6379), one after the
# other in the same run. Prints drain time, tasks/s and peak RSS per worker, the ratios, and a
# final JSON line. The driver is tests/bench/bench.py; flags go to it:
#   scripts/bench.sh [--broker redis|amqp] [--tasks N] [--concurrency C] [--prefetch-multiplier M]
#                    [--rounds R] [--only python|celeriac] [--loglevel LEVEL] [--timeout S]   (--help for all)
# With --broker amqp both workers consume from the machine's RabbitMQ (127.0.0.1:5672, guest/guest,
# started here when none answers) in a private vhost made here and deleted at exit; results stay
# in the private Redis.
# Worker logs are kept in the printed folder when the run fails, or when BENCH_KEEP=1.
source "$(dirname "$0")/lib.sh"

ensure_redis_installed
ensure_venv
BROKER=redis
prev=""
for a in "$@"; do
  case "$a" in -h | --help) exec "$VENV/bin/python" "$ROOT/tests/bench/bench.py" --help ;; esac
  case "$a" in --broker=*) BROKER="${a#--broker=}" ;; esac
  [ "$prev" != --broker ] || BROKER="$a"
  prev="$a"
done
case "$BROKER" in
  redis) ;;
  amqp) ensure_rabbitmq ;;
  *) echo "bench: --broker must be redis or amqp, not '$BROKER'" >&2; exit 2 ;;
esac
ensure_rust
command -v cc >/dev/null || apt_install build-essential
say "building celeriac-worker (cargo build --release) into $CARGO_TARGET_DIR"
(cd "$ROOT" && cargo build --locked --release -p celeriac-worker)
BIN="$CARGO_TARGET_DIR/release/celeriac-worker"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/celeriac-bench.XXXXXX")"
REDIS_PID=""
PORT=""
VHOST=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Workers the driver could not stop (it was killed): their process groups, by recorded id.
  if [ -s "$WORK/workers.pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 1
      kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$WORK/workers.pids"
  fi
  if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$REDIS_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$REDIS_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  if [ -n "$VHOST" ]; then
    as_root rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 ||
      echo "bench: could not delete the RabbitMQ vhost $VHOST (rabbitmqctl delete_vhost $VHOST)" >&2
  fi
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    echo "bench: worker and redis logs kept in $WORK" >&2
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

EXTRA=()
if [ "$BROKER" = amqp ]; then
  # Recorded before it exists, so that the trap deletes a half-made vhost too.
  VHOST="celeriac-bench-$$-$(basename "$WORK" | cut -d. -f2)"
  as_root rabbitmqctl -q add_vhost "$VHOST" >/dev/null
  as_root rabbitmqctl -q set_permissions -p "$VHOST" guest '.*' '.*' '.*' >/dev/null
  say "private RabbitMQ vhost $VHOST on 127.0.0.1:5672"
  EXTRA=(--amqp-vhost "$VHOST")
fi

"$VENV/bin/python" -u "$ROOT/tests/bench/bench.py" --port "$PORT" --worker-bin "$BIN" --work-dir "$WORK" \
  "${EXTRA[@]}" "$@"
