"""The container image: the Dockerfile's runtime stage, run under podman as Kubernetes runs it.

These machines cannot pull base images, so the runtime stage's layout is assembled here from the
binaries under test: both binaries at the Dockerfile's destination, the shared libraries `ldd`
finds for them (with the loader), distroless' /etc/passwd and /etc/group entries for nonroot
(65532) and the CA bundle; no shell, nothing else. The image config (USER, ENTRYPOINT, EXPOSE,
STOPSIGNAL) is read from the Dockerfile's runtime stage itself and applied with `podman import
--change`, so a change there is what runs here. The container runs read-only, without
capabilities, with no-new-privileges, on the host network (the suite's Redis is on loopback).

What the real image adds that this one lacks: distroless' other files (libssl, libstdc++,
libgomp, tzdata, /tmp, /home/nonroot's contents, os-release) and a release build instead of a
debug one (stripped of debug info here, to keep the import quick).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import time
import uuid

import pytest

from support import BEAT_BIN, ROOT, WORKER_BIN, wait_for

pytestmark = pytest.mark.once

NONROOT = 65532
# `podman stop -t GRACE`: SIGTERM, then SIGKILL after GRACE seconds, as a pod's
# terminationGracePeriodSeconds. Well above what the drain below needs (the rest of a 3 s task),
# and well below the worker's own give-up point (shutdown timeout + 20 s), so exceeding it means
# the signal did not reach the worker or the worker did not act on it.
GRACE = 15
SHUTDOWN_TIMEOUT = 10


def podman(*args, check=True, timeout=60, **kwargs):
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def runtime_stage():
    """The instructions of the Dockerfile's last stage, as (keyword, rest) pairs."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    stage = [ln.split(None, 1) for ln in lines[starts[-1]:]]
    return [(p[0].upper(), p[1] if len(p) > 1 else "") for p in stage]


def image_config(stage):
    """The --change options of `podman import` for the runtime stage, and its binaries' directory."""
    changes, dest = [], None
    for kw, rest in stage:
        if kw in ("USER", "EXPOSE", "STOPSIGNAL"):
            changes.append(f"{kw} {rest}")
        elif kw == "ENTRYPOINT":
            try:
                entrypoint = json.loads(rest)
            except ValueError:
                entrypoint = None
            # The shell form would need /bin/sh, and the shell, not the worker, would get SIGTERM.
            assert isinstance(entrypoint, list) and entrypoint, f"ENTRYPOINT {rest} is not in exec form"
            changes.append(f"ENTRYPOINT {rest}")
        elif kw == "COPY" and "celeriac-worker" in rest:
            *sources, dest = rest.split()
            assert {pathlib.PurePath(s).name for s in sources} >= {"celeriac-worker", "celeriac-beat"}, rest
    assert dest and dest.endswith("/"), "the runtime stage copies both binaries into one directory"
    return changes, dest


def shared_libraries(binary):
    """The paths `ldd` resolves for a binary, the loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    assert "not found" not in out, out
    return sorted({m for m in re.findall(r"(/\S+) \(0x", out)})


def copy_binary(src, dst):
    """The binary without its debug info (a debug build is ~350 MB, ~70 MB stripped)."""
    if shutil.which("objcopy"):
        subprocess.run(["objcopy", "--strip-debug", str(src), str(dst)], check=True)
    else:
        shutil.copy2(src, dst)
    dst.chmod(0o755)


def assemble_rootfs(root, bindir):
    bins = {"celeriac-worker": WORKER_BIN, "celeriac-beat": BEAT_BIN}
    (root / bindir.lstrip("/")).mkdir(parents=True)
    for name, src in bins.items():
        copy_binary(src, root / bindir.lstrip("/") / name)
    for lib in sorted(set(shared_libraries(WORKER_BIN)) | set(shared_libraries(BEAT_BIN))):
        dst = root / lib.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(lib), dst)
    etc = root / "etc"
    (etc / "ssl" / "certs").mkdir(parents=True)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", etc / "ssl" / "certs" / "ca-certificates.crt")
    # distroless' entries (nonroot's shell is not a shell: there is none).
    (etc / "passwd").write_text("root:x:0:0:root:/root:/sbin/nologin\n"
                                f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nnonroot:x:{NONROOT}:\n")
    (root / "home" / "nonroot").mkdir(parents=True)


def owned(info):
    """Everything root's and not writable by others, but nonroot's home, as in distroless."""
    home = info.name in ("./home/nonroot", "home/nonroot")
    info.uid = info.gid = NONROOT if home else 0
    info.uname = info.gname = "nonroot" if home else "root"
    info.mode &= ~0o022
    return info


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if not shutil.which("podman"):
        pytest.fail("podman is not installed: scripts/test.sh installs it (ensure_podman)", pytrace=False)
    for b in (WORKER_BIN, BEAT_BIN):
        assert os.path.exists(b), f"{b} is missing: scripts/test.sh builds it"
    changes, bindir = image_config(runtime_stage())
    work = tmp_path_factory.mktemp("image")
    root = work / "rootfs"
    assemble_rootfs(root, bindir)
    with tarfile.open(work / "rootfs.tar", "w") as tar:
        tar.add(root, arcname=".", filter=owned)
    names = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert not {"bin", "usr/bin", "sbin"} & names, "no shell, no /bin"
    tag = f"localhost/celeriac-image-test:{uuid.uuid4().hex[:12]}"
    t0 = time.monotonic()
    podman("import", "-q", *[a for c in changes for a in ("--change", c)], str(work / "rootfs.tar"), tag)
    print(f"image {tag}: {len(names)} files, imported in {time.monotonic() - t0:.1f} s; {changes}")
    yield tag, bindir
    podman("rmi", "-f", tag, check=False)


@pytest.fixture
def container(image, redis_server):
    """Starts the image's entrypoint (the worker) on the suite's Redis: container(*worker_args) -> name."""
    tag, _ = image
    names = []

    def start(*args):
        name = f"celeriac-test-{uuid.uuid4().hex[:12]}"
        names.append(name)
        # --read-only-tmpfs=false: no writable /tmp, /run or /var/tmp either, as with Kubernetes'
        # readOnlyRootFilesystem.
        podman("run", "-d", "--name", name, "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "--network", "host",
               "-e", f"CELERY_BROKER_URL={redis_server.url(0)}",
               "-e", f"CELERY_RESULT_BACKEND={redis_server.url(1)}",
               "-e", f"CELERIAC_SHUTDOWN_TIMEOUT={SHUTDOWN_TIMEOUT}",
               "-e", "CELERY_WORKER_LOGLEVEL=INFO",
               tag, *args)
        return name

    yield start
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def logs(name):
    out = podman("logs", name, check=False)
    return out.stdout + out.stderr


def state(name):
    return json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)


def wait_log(name, pattern, timeout=15):
    def seen():
        if re.search(pattern, logs(name)):
            return True
        st = state(name)
        if not st["Running"]:
            raise AssertionError(f"the container exited ({st['ExitCode']}) before /{pattern}/:\n{logs(name)[-4000:]}")
        return False

    wait_for(seen, timeout=timeout, interval=0.1, what=f"/{pattern}/ in the container's log")


def proc_status(pid):
    fields = dict(ln.split(":", 1) for ln in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: v.split() for k, v in fields.items()}


def test_worker_runs_as_nonroot_read_only_and_drains_on_podman_stop(container, app, backend):
    name = container("--concurrency", "2", "--hostname", "image@%h")
    wait_log(name, r" ready: consuming ")

    # Runs as 65532:65532 (real, effective, saved and filesystem ids), without capabilities and
    # with no_new_privs, and the worker itself is PID 1 of the container: no shell in between.
    pid = state(name)["Pid"]
    status = proc_status(pid)
    assert status["Uid"] == [str(NONROOT)] * 4, status["Uid"]
    assert status["Gid"] == [str(NONROOT)] * 4, status["Gid"]
    assert int(status["CapEff"][0], 16) == 0 and int(status["CapPrm"][0], 16) == 0
    assert status["NoNewPrivs"] == ["1"]
    assert status["NSpid"][-1] == "1", status["NSpid"]
    cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0] == b"/usr/local/bin/celeriac-worker", cmdline
    top = podman("top", name, "user", "group", "args").stdout
    assert re.search(r"^nonroot\s+nonroot\s+/usr/local/bin/celeriac-worker", top, re.M), top
    # The root file system is mounted read-only in the worker's mount namespace, and nothing
    # writable is mounted on /tmp.
    mounts = {f[4]: f[5].split(",") for f in
              (ln.split() for ln in pathlib.Path(f"/proc/{pid}/mountinfo").read_text().splitlines())}
    assert "ro" in mounts["/"], mounts["/"]
    assert "/tmp" not in mounts, mounts.get("/tmp")

    # A task sent by Python Celery runs and its result comes back.
    assert app.send_task("celeriac.test.add", args=[2, 3]).get(timeout=10) == 5

    # `podman stop` while a task runs: SIGTERM reaches the worker, which lets the task finish,
    # stores its result, and exits 0 well within the grace period (else: SIGKILL, exit 137).
    slow = app.send_task("celeriac.test.sleep", args=[3])
    wait_log(name, rf"celeriac\.test\.sleep\[{slow.id}\] received")
    assert slow.state == "PENDING"
    t0 = time.monotonic()
    stop = podman("stop", "-t", str(GRACE), name, timeout=GRACE + 30)
    took = time.monotonic() - t0
    final = state(name)
    print(f"podman stop -t {GRACE}: stopped in {took:.2f} s, exit code {final['ExitCode']}")
    assert final["ExitCode"] == 0, f"exit code {final['ExitCode']} ({stop.stderr.strip()}):\n{logs(name)[-3000:]}"
    assert not final["OOMKilled"]
    assert took < GRACE, f"took {took:.1f} s, the grace period is {GRACE} s"
    assert slow.get(timeout=5) == 3
    log = logs(name)
    assert "warm shutdown" in log and "image@" in log and " stopped" in log, log[-3000:]


def test_beat_runs_in_the_image(image):
    """celeriac-beat, the other command of the image: its libraries are there and it runs as nonroot."""
    tag, bindir = image
    out = podman("run", "--rm", "-i", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 "--network", "none", "--entrypoint", bindir + "celeriac-beat", tag,
                 "schedule", "--schedule", "/dev/stdin", "--count", "1", "--format", "json",
                 input=(ROOT / "beat" / "schedule.example.toml").read_text())
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    assert {e["entry"] for e in entries} >= {"add-every-10s", "sum-every-minute"}, out.stdout


def test_there_is_no_shell_in_the_image(image):
    tag, _ = image
    for sh in ("/bin/sh", "/bin/bash", "/usr/bin/sh"):
        out = podman("run", "--rm", "--network", "none", "--entrypoint", sh, tag, "-c", "true", check=False)
        assert out.returncode != 0, f"{sh} ran in the image"
        assert re.search(r"no such file or directory", out.stderr, re.I), out.stderr
