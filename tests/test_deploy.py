"""The deployment files: every overlay under k8s/overlays/ renders and keeps the project's rules
(k8s/rules.py), and scripts/check_deploy.sh fails, naming each rule, on a deliberately broken
kustomization (tests/fixtures/k8s-broken/) and on a bad Dockerfile.

The tools are the ones scripts/check_deploy.sh installed (scripts/test.sh runs it before the
suite): its venv at $CELERIAC_DEPLOY_VENV or $CACHE/deploy-venv, and kubectl ($KUBECTL, on PATH,
or the venv's fallback). Without them these tests skip, except in CI, where they fail.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CELERIAC_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "celeriac")
DEPLOY_VENV = Path(os.environ.get("CELERIAC_DEPLOY_VENV") or CACHE / "deploy-venv")
OVERLAYS = sorted(p.parent for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
BROKEN = ROOT / "tests" / "fixtures" / "k8s-broken"
ADAPTER_VALUES = ROOT / "k8s" / "overlays" / "eks" / "prometheus-adapter-values.yaml"


@pytest.fixture(autouse=True)
def _clean_redis():
    """These tests need no Redis (overrides the suite's autouse fixture)."""
    yield


def _missing(what):
    msg = f"{what} is missing: run scripts/check_deploy.sh, which installs it"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def deploy_python():
    py = DEPLOY_VENV / "bin" / "python"
    if not py.exists():
        _missing(f"the deployment-check venv ({DEPLOY_VENV})")
    return str(py)


@pytest.fixture(scope="module")
def kubectl():
    for k in (os.environ.get("KUBECTL"), shutil.which("kubectl"), str(DEPLOY_VENV / "bin" / "kubectl")):
        if k and os.access(k, os.X_OK):
            return k
    _missing("kubectl")


@pytest.fixture(scope="module")
def rules():
    spec = importlib.util.spec_from_file_location("celeriac_k8s_rules", ROOT / "k8s" / "rules.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclass looks itself up there
    spec.loader.exec_module(mod)
    return mod


def _render(kubectl, overlay, tmp_path):
    out = tmp_path / f"{overlay.name}.yaml"
    r = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out.write_text(r.stdout)
    return out


def _objects(deploy_python, path):
    """The YAML documents of a file, parsed by the deployment venv's PyYAML."""
    r = subprocess.run(
        [deploy_python, "-c", "import json,sys,yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))", str(path)],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_there_are_the_two_overlays():
    assert {o.name for o in OVERLAYS} >= {"eks", "keda"}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[o.name for o in OVERLAYS])
def test_rendered_overlay_keeps_the_project_rules(overlay, kubectl, deploy_python, rules, tmp_path):
    rendered = _render(kubectl, overlay, tmp_path)
    r = subprocess.run([deploy_python, str(ROOT / "k8s" / "rules.py"), "--adapter-values", str(ADAPTER_VALUES), str(rendered)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "RULE" not in r.stdout, r.stdout + r.stderr
    # The same through the module's API, on the parsed objects.
    docs = _objects(deploy_python, rendered)
    adapter = _objects(deploy_python, ADAPTER_VALUES)[0]
    assert rules.check(docs, adapter) == []

    kinds = [d["kind"] for d in docs]
    workers = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"]}
    assert set(workers) == {"celeriac-worker-default", "celeriac-worker-media"}
    # Each worker group consumes its own queue, and its autoscaler watches that queue.
    queue_of = {}
    for name, d in workers.items():
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        queue_of[name] = args[args.index("--queues") + 1]
    assert sorted(queue_of.values()) == ["default", "media"]
    if overlay.name == "keda":
        assert "HorizontalPodAutoscaler" not in kinds
        sos = [d for d in docs if d["kind"] == "ScaledObject"]
        assert {s["spec"]["scaleTargetRef"]["name"] for s in sos} == set(workers)
        for s in sos:
            redis = [t for t in s["spec"]["triggers"] if t["type"] == "redis"]
            assert len(redis) == 1 and redis[0]["metadata"]["listName"] == queue_of[s["spec"]["scaleTargetRef"]["name"]]
            assert redis[0]["authenticationRef"]["name"] in {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}
            assert s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    else:
        assert "ScaledObject" not in kinds
        hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
        assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == set(workers)
        for h in hpas:
            assert h["apiVersion"] == "autoscaling/v2"
            types = {m["type"] for m in h["spec"]["metrics"]}
            assert types == {"Resource", "External"}
            ext = next(m for m in h["spec"]["metrics"] if m["type"] == "External")["external"]["metric"]
            assert ext["selector"]["matchLabels"]["queue"] == queue_of[h["spec"]["scaleTargetRef"]["name"]]
            assert h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # The beat and worker ServiceAccounts: IRSA for workers only.
    sas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert "eks.amazonaws.com/role-arn" in sas["celeriac-worker"]["metadata"]["annotations"]
    assert "eks.amazonaws.com/role-arn" not in (sas["celeriac-beat"]["metadata"].get("annotations") or {})
    # No Secret objects at all: they are created outside the manifests.
    assert "Secret" not in kinds


EXPECTED_RULES = [
    "beat-singleton", "one-autoscaler", "worker-pdb", "worker-rollout", "probes", "grace-period",
    "no-literal-secrets", "hpa-metric-served",
]


def test_check_deploy_fails_on_the_broken_fixture(deploy_python, kubectl):
    r = subprocess.run([str(ROOT / "scripts" / "check_deploy.sh"), "--overlay", str(BROKEN), "--no-checkov", "--no-hadolint"],
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for rule in EXPECTED_RULES:
        assert f"[{rule}]" in out, f"rule {rule} did not fire:\n{out}"
    # Each broken thing is named, not just counted.
    assert "replicas is 2, must be 1" in out
    assert "strategy must be Recreate" in out
    assert "PodDisruptionBudget/beat can block node drains" in out
    assert "targeted by 2 autoscalers: HorizontalPodAutoscaler/worker, ScaledObject/worker" in out
    assert "terminationGracePeriodSeconds 30 must exceed the drain deadline 25 + 20 s" in out
    assert "livenessProbe on '/health'" in out
    assert "Secret/celeriac-secrets: a Secret with literal data" in out
    assert "env CELERY_BROKER_URL is a literal value" in out
    # The strict schema check rejects the misspelt field.
    assert "imagePullPolice" in out and "FAILED: schema validation, project rules" in out


def test_check_deploy_fails_on_a_bad_dockerfile(deploy_python, kubectl):
    r = subprocess.run([str(ROOT / "scripts" / "check_deploy.sh"), "--overlay", str(ROOT / "k8s" / "overlays" / "eks"),
                        "--no-checkov", "--dockerfile", str(ROOT / "tests" / "fixtures" / "dockerfile-broken" / "Dockerfile")],
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "DL3006" in out and "FAILED: hadolint" in out


def _worker(env=None, args=None, grace=None, probes=True):
    c = {"name": "w", "image": "123.dkr.ecr.eu-west-1.amazonaws.com/celeriac@sha256:" + "0" * 64,
         "args": args or ["--queues", "default"], "env": env or [], "ports": [{"name": "http", "containerPort": 9808}],
         "envFrom": [{"configMapRef": {"name": "cfg"}}]}
    if probes:
        c["startupProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
        c["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": 9808}}
        c["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    spec = {"containers": [c]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"selector": {"matchLabels": {"a": "w"}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
                     "template": {"metadata": {"labels": {"a": "w"}}, "spec": spec}}}


def _cfg(**data):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
            "data": {"CELERIAC_HTTP_ADDR": "0.0.0.0:9808", **data}}


def _grace_violations(rules, docs):
    return [v for v in rules.check(docs, require_autoscaling=False) if v.rule == "grace-period"]


def test_grace_period_rule_reads_the_timeout_where_the_worker_does(rules):
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "w"},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "w"}}}}
    # Default 25 s: 45 s is the deadline itself, not above it.
    assert _grace_violations(rules, [_cfg(), _worker(grace=45), pdb])
    assert not _grace_violations(rules, [_cfg(), _worker(grace=46), pdb])
    # From the ConfigMap, from the container's env (which wins), from the flag (which wins).
    assert _grace_violations(rules, [_cfg(CELERIAC_SHUTDOWN_TIMEOUT="60"), _worker(grace=60), pdb])
    env = [{"name": "CELERIAC_SHUTDOWN_TIMEOUT", "value": "10"}]
    assert not _grace_violations(rules, [_cfg(CELERIAC_SHUTDOWN_TIMEOUT="60"), _worker(env=env, grace=31), pdb])
    args = ["--queues", "default", "--shutdown-timeout", "100"]
    assert _grace_violations(rules, [_cfg(), _worker(env=env, args=args, grace=60), pdb])
    assert rules.check([_cfg(), _worker(grace=60), pdb], require_autoscaling=False) == []


def test_secret_rule_allows_references_and_flags_literals(rules):
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "w"},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"a": "w"}}}}
    ref = [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "database-url"}}}]
    assert rules.check([_cfg(), _worker(env=ref, grace=60), pdb], require_autoscaling=False) == []
    literal = [{"name": "DATABASE_URL", "value": "mysql://app@db:3306/app"}]
    assert [v.rule for v in rules.check([_cfg(), _worker(env=literal, grace=60), pdb], require_autoscaling=False)] == ["no-literal-secrets"]
    in_cm = rules.check([_cfg(CELERY_BROKER_URL="rediss://:pw@r:6379/0"), _worker(grace=60), pdb], require_autoscaling=False)
    assert {v.rule for v in in_cm} == {"no-literal-secrets"} and len(in_cm) == 2  # the key and the password
    probe_less = rules.check([_cfg(), _worker(grace=60, probes=False), pdb], require_autoscaling=False)
    assert {v.rule for v in probe_less} == {"probes"} and len(probe_less) == 3
