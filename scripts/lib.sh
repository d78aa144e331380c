# shellcheck shell=bash
# Shared set-up for the scripts in this folder: everything a fresh Debian machine lacks is
# installed or started here, and what already runs is left alone.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CELERIAC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/celeriac}"
VENV="${CELERIAC_VENV:-$CACHE/venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "missing $*, and no apt-get to install it" >&2; return 1; }
  say "installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
  if ! command -v cargo >/dev/null; then
    command -v curl >/dev/null || apt_install curl ca-certificates
    command -v cc >/dev/null || apt_install build-essential
    say "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  # A C toolchain for the -sys crates; cmake and nasm build libjpeg-turbo (with its SIMD code),
  # the JPEG codec of the media tasks.
  local tools=()
  command -v cc >/dev/null || tools+=(build-essential)
  command -v cmake >/dev/null || tools+=(cmake)
  command -v nasm >/dev/null || tools+=(nasm)
  [ "${#tools[@]}" -eq 0 ] || apt_install "${tools[@]}"
  # The lints of scripts/test.sh need these two components.
  if command -v rustup >/dev/null; then
    for c in clippy rustfmt; do
      rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
  fi
}

ensure_redis_installed() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server
}

# The server binaries behind the django-celery-beat tests, which start private MariaDB and
# PostgreSQL servers of their own (tests/dbservers.py). Debian's packages are installed only when
# a binary is missing; a system service they start (or that already runs) is left alone.
have_mariadb_server() {
  { command -v mariadbd || command -v mysqld || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]; } >/dev/null &&
    { command -v mariadb-install-db || command -v mysql_install_db; } >/dev/null
}
have_postgres_server() {
  local d
  if command -v initdb >/dev/null && command -v postgres >/dev/null; then return 0; fi
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && return 0; done
  return 1
}
ensure_db_tools() {
  local pkgs=()
  have_mariadb_server || pkgs+=(mariadb-server)
  have_postgres_server || pkgs+=(postgresql)
  [ "${#pkgs[@]}" -eq 0 ] || apt_install "${pkgs[@]}"
}

# What the interop suite needs besides Redis: openssl makes its TLS certificates, and the database
# servers serve the django-celery-beat tests.
ensure_test_tools() {
  ensure_redis_installed
  command -v openssl >/dev/null || apt_install openssl
  ensure_db_tools
}

# Starts a Redis on 127.0.0.1:$1 unless one answers there already.
ensure_redis_running() {
  local port="${1:-6379}"
  ensure_redis_installed
  if redis-cli -p "$port" ping >/dev/null 2>&1; then return 0; fi
  say "starting redis-server on 127.0.0.1:$port"
  mkdir -p "$CACHE/redis-$port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$CACHE/redis-$port" \
    --logfile "$CACHE/redis-$port/redis.log" --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server did not start; see $CACHE/redis-$port/redis.log" >&2
  return 1
}

# RabbitMQ for the AMQP client's tests: the machine's server on 127.0.0.1:5672 with guest/guest
# (each test makes and drops its own vhost with rabbitmqctl, so a server that already runs is
# shared, never changed). Installed from Debian's packages and started when missing.
rabbitmq_up() {
  command -v rabbitmqctl >/dev/null && as_root rabbitmqctl -q status >/dev/null 2>&1 &&
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
  rabbitmq_up && return 0
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  say "starting rabbitmq-server"
  # A node whose application was stopped (rabbitmqctl stop_app) only needs start_app.
  as_root rabbitmqctl -q start_app >/dev/null 2>&1 ||
    as_root service rabbitmq-server start >/dev/null 2>&1 || as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 120); do rabbitmq_up && return 0; sleep 0.5; done
  echo "rabbitmq-server did not start on 127.0.0.1:5672 (see /var/log/rabbitmq)" >&2
  return 1
}

# A virtualenv with the pinned packages of a requirements file, rebuilt when that file changes:
# ensure_venv [requirements-file [venv-dir]] (default: tests/requirements.txt into $VENV).
ensure_venv() {
  local req="${1:-$ROOT/tests/requirements.txt}" venv="${2:-$VENV}"
  local stamp="$venv/.requirements.sha256" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v python3 >/dev/null || apt_install python3
  python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  say "creating the Python venv at $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}

build_binaries() {
  ensure_rust
  command -v cc >/dev/null || apt_install build-essential
  say "building (cargo build ${*:-}) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --locked --workspace --bins "$@")
}

# Rootful podman (Debian's package, with runc) for tests/test_image.py, which runs the image's
# runtime layout under it. Left alone when it already runs containers as configured. Otherwise a
# config of our own, $CACHE/containers.conf, is written and exported as CONTAINERS_CONF (podman
# then reads only that file; the system's config is never edited): cgroupfs (no systemd here),
# runc, and default ulimits that this process may grant: podman's defaults (1048576 open files)
# exceed the hard limits of a machine without CAP_SYS_RESOURCE, where runc cannot set them, and
# podman starts conmon, hence runc, with at most 32768 processes.
ensure_podman() {
  local pkgs=()
  command -v podman >/dev/null || pkgs+=(podman)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || pkgs+=(runc)
  [ "${#pkgs[@]}" -eq 0 ] || apt_install "${pkgs[@]}"
  podman_runs 2>/dev/null && return 0
  local conf="$CACHE/containers.conf" nofile nproc
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  [ "$nofile" != unlimited ] && [ "$nofile" -le 1048576 ] || nofile=1048576
  [ "$nproc" != unlimited ] && [ "$nproc" -le 32768 ] || nproc=32768
  say "podman cannot run containers with its defaults; using $conf"
  mkdir -p "$CACHE"
  cat >"$conf" <<CONF
# Written by scripts/lib.sh (ensure_podman); read by podman through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
  export CONTAINERS_CONF="$conf"
  podman_runs || {
    echo "podman cannot run a container on this machine even with $conf (see the error above);" \
      "tests/test_image.py needs rootful podman with runc" >&2
    return 1
  }
}

# Runs a throw-away container the way tests/test_image.py runs the image (read-only, no
# capabilities), from an image imported from this machine's own `true` and its libraries, so
# nothing is pulled. Podman's error goes to stderr.
podman_runs() {
  local dir tag="localhost/celeriac-podman-probe:$$" true_bin f ok=0
  true_bin="$(type -P true)"
  dir="$(mktemp -d)"
  mkdir -p "$dir/root/bin"
  cp "$true_bin" "$dir/root/bin/true"
  for f in $(ldd "$true_bin" | grep -o '/[^ ]*'); do
    mkdir -p "$dir/root$(dirname "$f")"
    cp -L "$f" "$dir/root$f"
  done
  tar -C "$dir/root" -cf "$dir/root.tar" .
  if podman import -q "$dir/root.tar" "$tag" >/dev/null &&
    podman run --rm --read-only --cap-drop ALL --security-opt no-new-privileges --network host \
      --user 65532:65532 "$tag" /bin/true >/dev/null; then ok=1; fi
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$dir"
  [ "$ok" -eq 1 ]
}
