#!/usr/bin/env python3
"""The project's own rules for rendered celeriac manifests (what no generic scanner knows).

    rules.py [--adapter-values FILE] [--no-require-autoscaling] rendered.yaml...

`check(docs)` returns the violations of a list of Kubernetes objects; the command prints them,
one line each as `[rule] Kind/name: why`, and exits 1 if there was any. The rules:

- beat-singleton: celeriac-beat runs as `replicas: 1` with `strategy: Recreate`, no autoscaler
  targets it, and no PodDisruptionBudget that could block a node drain selects its pods.
- one-autoscaler: at most one HorizontalPodAutoscaler or KEDA ScaledObject per Deployment, and an
  autoscaled Deployment sets no `replicas` (an apply would reset the autoscaler's choice).
- worker-autoscaled, worker-pdb, worker-rollout: each worker Deployment has its autoscaler (in
  an overlay; --no-require-autoscaling for a base), a PodDisruptionBudget, and rolls out with
  `maxUnavailable: 0`.
- grace-period: a worker pod's terminationGracePeriodSeconds exceeds the drain deadline,
  CELERIAC_SHUTDOWN_TIMEOUT (from --shutdown-timeout, the container's env or its ConfigMaps;
  default 25) + 20 s.
- probes: every celeriac container serves CELERIAC_HTTP_ADDR on port 9808 and has its startup
  and liveness probes on /healthz and its readiness probe on /readyz, on that port.
- no-literal-secrets: no Secret object carries data, no URL with a password appears anywhere,
  and the broker/database URLs and password-like settings come from secretKeyRef, never from a
  literal value or a ConfigMap.
- hpa-metric-served: every External metric an HPA scales on is served by a rule of the shipped
  prometheus-adapter values (with --adapter-values).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set

HTTP_PORT = 9808
DEFAULT_SHUTDOWN_TIMEOUT = 25
DRAIN_EXTRA_SECONDS = 20  # results/acks flush (10 s) + hand-back of leftovers (10 s)
DEFAULT_GRACE = 30  # Kubernetes' default terminationGracePeriodSeconds

# Settings that hold credentials (or URLs that may) and must come from a Secret.
SECRET_SETTINGS = {
    "CELERY_BROKER_URL",
    "DATABASE_URL",
    "CELERIAC_BEAT_DJANGO_DB",
    "DJANGO_SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
}
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.I)
CREDENTIAL_URL = re.compile(r"^(redis|rediss|mysql|mariadb|postgres|postgresql)://", re.I)


@dataclass(frozen=True)
class Violation:
    rule: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.obj}: {self.message}"


def _ref(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _pod_spec(doc: dict) -> Optional[dict]:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    if kind == "Pod":
        return spec
    return None


def _pod_labels(doc: dict) -> Dict[str, str]:
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def _image_repo(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def container_role(c: dict) -> Optional[str]:
    """'worker', 'beat' or None (not a celeriac container)."""
    cmd = " ".join(str(x) for x in (c.get("command") or []))
    if "celeriac-beat" in cmd:
        return "beat"
    if "celeriac-worker" in cmd:
        return "worker"
    if _image_repo(str(c.get("image", ""))) == "celeriac":
        # The image's ENTRYPOINT is celeriac-worker; a command of anything else is not ours.
        return "worker" if not cmd else None
    return None


def _roles(doc: dict) -> Set[str]:
    ps = _pod_spec(doc) or {}
    return {r for r in (container_role(c) for c in ps.get("containers") or []) if r}


def _selector_matches(selector: Optional[dict], labels: Dict[str, str]) -> bool:
    if not selector:
        return False  # an empty PDB selector matches nothing in policy/v1 semantics we rely on
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _pdb_blocks(pdb: dict) -> bool:
    """Whether this PDB can refuse every eviction of a one-pod workload."""
    spec = pdb.get("spec") or {}
    if "minAvailable" in spec:
        v = spec["minAvailable"]
        return not (v == 0 or (isinstance(v, str) and v.strip() == "0%"))
    if "maxUnavailable" in spec:
        v = spec["maxUnavailable"]
        return v == 0 or (isinstance(v, str) and v.strip() == "0%")
    return False


def _env_sources(c: dict, configmaps: Dict[str, dict]) -> Dict[str, Any]:
    """The container's environment as literal values where they can be known."""
    env: Dict[str, Any] = {}
    for ef in c.get("envFrom") or []:
        cm = ef.get("configMapRef")
        if cm and cm.get("name") in configmaps:
            prefix = ef.get("prefix", "")
            for k, v in ((configmaps[cm["name"]].get("data")) or {}).items():
                env[prefix + k] = v
    for e in c.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "valueFrom" in e:
            ref = e["valueFrom"].get("configMapKeyRef")
            if ref and ref.get("name") in configmaps:
                env[e["name"]] = ((configmaps[ref["name"]].get("data")) or {}).get(ref.get("key"))
            else:
                env[e["name"]] = None  # from a Secret or the downward API: unknown here
    return env


def _flag(args: List[str], name: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def shutdown_timeout(c: dict, configmaps: Dict[str, dict]) -> float:
    args = [str(a) for a in (c.get("command") or [])[1:] + (c.get("args") or [])]
    v = _flag(args, "--shutdown-timeout")
    if v is None:
        v = _env_sources(c, configmaps).get("CELERIAC_SHUTDOWN_TIMEOUT")
    if v is None:
        return DEFAULT_SHUTDOWN_TIMEOUT
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("inf")  # unparseable: no grace period can be shown to cover it


def _probe_port(probe: dict, c: dict) -> Optional[int]:
    port = (probe.get("httpGet") or {}).get("port")
    if isinstance(port, str) and not port.isdigit():
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return p.get("containerPort")
        return None
    return int(port) if port is not None else None


def _check_probes(ref: str, c: dict, configmaps: Dict[str, dict]) -> List[Violation]:
    out = []
    name = f"{ref} container {c.get('name')}"
    addr = _env_sources(c, configmaps).get("CELERIAC_HTTP_ADDR")
    args = [str(a) for a in (c.get("args") or [])]
    addr = _flag(args, "--http-addr") or addr
    if not addr or not str(addr).rsplit(":", 1)[-1] == str(HTTP_PORT):
        out.append(Violation("probes", name, f"CELERIAC_HTTP_ADDR must listen on port {HTTP_PORT} (got {addr!r})"))
    want = {"startupProbe": {"/healthz"}, "livenessProbe": {"/healthz"}, "readinessProbe": {"/readyz"}}
    for kind, paths in want.items():
        probe = c.get(kind)
        if not probe:
            out.append(Violation("probes", name, f"no {kind}"))
            continue
        path = (probe.get("httpGet") or {}).get("path")
        if path not in paths:
            out.append(Violation("probes", name, f"{kind} on {path!r}, must be an httpGet on {sorted(paths)[0]}"))
        port = _probe_port(probe, c)
        if port != HTTP_PORT:
            out.append(Violation("probes", name, f"{kind} on port {port!r}, must be {HTTP_PORT}"))
    return out


def _walk_strings(node: Any, path: str = ""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _check_secrets(docs: List[dict]) -> List[Violation]:
    out = []
    for doc in docs:
        ref = _ref(doc)
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            out.append(Violation("no-literal-secrets", ref, "a Secret with literal data in the manifests; "
                                 "create it with kubectl or External Secrets instead"))
        for path, s in _walk_strings(doc):
            if path.startswith("metadata.annotations.kubectl.kubernetes.io/last-applied"):
                continue
            if URL_WITH_PASSWORD.search(s):
                out.append(Violation("no-literal-secrets", ref, f"{path} holds a URL with a password"))
        if doc.get("kind") == "ConfigMap":
            for k, v in (doc.get("data") or {}).items():
                if k in SECRET_SETTINGS or SECRET_NAME.search(k) or (
                    isinstance(v, str) and CREDENTIAL_URL.match(v) and k.endswith(("_URL", "_DB", "_BACKEND"))
                ):
                    out.append(Violation("no-literal-secrets", ref, f"data.{k} belongs in a Secret"))
        if doc.get("kind") == "ScaledObject":
            for i, t in enumerate((doc.get("spec") or {}).get("triggers") or []):
                for k in (t.get("metadata") or {}):
                    if k.lower() in ("password", "address", "host", "username") and t["metadata"][k]:
                        if k.lower() == "password":
                            out.append(Violation("no-literal-secrets", ref, f"triggers[{i}].metadata.{k} is "
                                                 "literal; use a TriggerAuthentication"))
        ps = _pod_spec(doc)
        if not ps:
            continue
        for c in (ps.get("initContainers") or []) + (ps.get("containers") or []):
            for e in c.get("env") or []:
                n = e.get("name", "")
                if "value" not in e:
                    vf = e.get("valueFrom") or {}
                    if (n in SECRET_SETTINGS or SECRET_NAME.search(n)) and "secretKeyRef" not in vf:
                        out.append(Violation("no-literal-secrets", f"{ref} container {c.get('name')}",
                                             f"env {n} must come from a secretKeyRef"))
                    continue
                v = str(e.get("value"))
                if n in SECRET_SETTINGS or SECRET_NAME.search(n) or (
                    CREDENTIAL_URL.match(v) and n.endswith(("_URL", "_DB", "_BACKEND"))
                ):
                    out.append(Violation("no-literal-secrets", f"{ref} container {c.get('name')}",
                                         f"env {n} is a literal value; use valueFrom.secretKeyRef"))
    return out


def served_external_metrics(values: dict) -> Set[str]:
    """Metric names a prometheus-adapter config (Helm values or the adapter's own file) serves."""
    rules = []
    if isinstance(values.get("rules"), dict):
        rules += values["rules"].get("external") or []
    rules += values.get("externalRules") or []
    names = set()
    for r in rules:
        as_ = ((r.get("name") or {}).get("as"))
        if as_ and "$" not in as_:
            names.add(as_)
        else:
            m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", r.get("seriesQuery", ""))
            if m:
                names.add(m.group(1))
    return names


def check(docs: Iterable[dict], adapter_values: Optional[dict] = None,
          require_autoscaling: bool = True) -> List[Violation]:
    docs = [d for d in docs if isinstance(d, dict)]
    out: List[Violation] = []
    configmaps = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    pdbs = [d for d in docs if d.get("kind") == "PodDisruptionBudget"]
    autoscalers: Dict[str, List[str]] = {}
    for d in docs:
        if d.get("kind") == "HorizontalPodAutoscaler":
            t = (d.get("spec") or {}).get("scaleTargetRef") or {}
            if t.get("kind", "Deployment") == "Deployment":
                autoscalers.setdefault(t.get("name"), []).append(_ref(d))
        elif d.get("kind") == "ScaledObject" and str(d.get("apiVersion", "")).startswith("keda.sh/"):
            t = (d.get("spec") or {}).get("scaleTargetRef") or {}
            if t.get("kind", "Deployment") == "Deployment":
                autoscalers.setdefault(t.get("name"), []).append(_ref(d))

    for d in deployments:
        ref, name, spec = _ref(d), d["metadata"]["name"], d.get("spec") or {}
        roles = _roles(d)
        scalers = autoscalers.get(name, [])
        labels = _pod_labels(d)
        selecting = [p for p in pdbs if _selector_matches((p.get("spec") or {}).get("selector"), labels)]
        if len(scalers) > 1:
            out.append(Violation("one-autoscaler", ref, f"targeted by {len(scalers)} autoscalers: {', '.join(scalers)}"))
        if scalers and "replicas" in spec:
            out.append(Violation("one-autoscaler", ref, "autoscaled but sets spec.replicas (each apply resets it)"))
        if "beat" in roles:
            if spec.get("replicas") != 1:
                out.append(Violation("beat-singleton", ref, f"replicas is {spec.get('replicas')!r}, must be 1"))
            if (spec.get("strategy") or {}).get("type") != "Recreate":
                out.append(Violation("beat-singleton", ref, "strategy must be Recreate (got "
                                     f"{(spec.get('strategy') or {}).get('type', 'RollingUpdate')})"))
            if scalers:
                out.append(Violation("beat-singleton", ref, f"beat must not be autoscaled ({', '.join(scalers)})"))
            for p in selecting:
                if _pdb_blocks(p):
                    out.append(Violation("beat-singleton", ref, f"{_ref(p)} can block node drains"))
        if "worker" in roles:
            if require_autoscaling and not scalers:
                out.append(Violation("worker-autoscaled", ref, "no HPA or ScaledObject targets this worker"))
            if not selecting:
                out.append(Violation("worker-pdb", ref, "no PodDisruptionBudget selects its pods"))
            strat = spec.get("strategy") or {}
            mu = (strat.get("rollingUpdate") or {}).get("maxUnavailable")
            if strat.get("type", "RollingUpdate") != "RollingUpdate" or mu not in (0, "0", "0%"):
                out.append(Violation("worker-rollout", ref, f"must roll out with maxUnavailable: 0 (got {mu!r})"))
        ps = _pod_spec(d) or {}
        grace = ps.get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        for c in ps.get("containers") or []:
            role = container_role(c)
            if role is None:
                continue
            out += _check_probes(ref, c, configmaps)
            if role == "worker":
                t = shutdown_timeout(c, configmaps)
                if not grace > t + DRAIN_EXTRA_SECONDS:
                    out.append(Violation("grace-period", ref, f"terminationGracePeriodSeconds {grace} must exceed "
                                         f"the drain deadline {t:g} + {DRAIN_EXTRA_SECONDS} s "
                                         f"(CELERIAC_SHUTDOWN_TIMEOUT {t:g})"))

    out += _check_secrets(docs)

    if adapter_values is not None:
        served = served_external_metrics(adapter_values)
        for d in docs:
            if d.get("kind") != "HorizontalPodAutoscaler":
                continue
            for m in (d.get("spec") or {}).get("metrics") or []:
                if m.get("type") == "External":
                    n = ((m.get("external") or {}).get("metric") or {}).get("name")
                    if n not in served:
                        out.append(Violation("hpa-metric-served", _ref(d),
                                             f"External metric {n!r} is not served by the adapter rules ({sorted(served)})"))
    return out


def load(path: str) -> List[dict]:
    import yaml  # only the command needs it: check() works on parsed objects

    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="celeriac's rules for rendered manifests")
    ap.add_argument("--adapter-values", help="prometheus-adapter values/config serving the HPAs' External metrics")
    ap.add_argument("--no-require-autoscaling", action="store_true")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    adapter = None
    if args.adapter_values:
        import yaml

        with open(args.adapter_values) as f:
            adapter = yaml.safe_load(f) or {}
    bad = 0
    for path in args.files:
        violations = check(load(path), adapter, not args.no_require_autoscaling)
        for v in violations:
            print(f"RULE {path}: {v}")
        if violations:
            bad += 1
        else:
            print(f"ok {path}: project rules hold")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
