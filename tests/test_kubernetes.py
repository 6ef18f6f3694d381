"""The Kubernetes manifests of deploy/kubernetes/: their environment contract against the
code, then that very environment run on local processes as one job.

The pods are read as Kubernetes would build them: ``valueFrom`` fields resolved (the pod's
IP is 127.0.0.1 here, a worker's completion index its rank), ``$(VAR)`` expanded, the
Service's name resolved to the scheduler, the Secret's mount replaced by keys from
``paramserver keygen``, and the image's ``python /app/train.py`` by the tests' train script.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port

yaml = pytest.importorskip("yaml")  # PyYAML, a dev dependency (pyproject.toml)

from paramserver._config import SETTINGS  # noqa: E402

HERE = Path(__file__).resolve().parent
K8S = HERE.parent / "deploy" / "kubernetes"
TRAIN = str(HERE / "scripts" / "train_sum.py")
KEY_FILES = ["scheduler.key", "scheduler.key_secret", "server.key", "server.key_secret", "worker.key",
             "worker.key_secret", "admin.key", "admin.key_secret"]
INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _docs() -> list[dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _jobs() -> dict[str, dict[str, Any]]:
    """role -> its Job."""
    jobs = {d["spec"]["template"]["metadata"]["labels"]["role"]: d for d in _docs() if d["kind"] == "Job"}
    assert sorted(jobs) == ["scheduler", "server", "worker"]
    return jobs


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def _plain_env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(job)["env"] if "value" in e}


def test_the_manifests_keep_the_environment_contract_of_the_code() -> None:
    jobs = _jobs()
    known = {s.env for s in SETTINGS}
    (service,) = [d for d in _docs() if d["kind"] == "Service"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (secret,) = kust["secretGenerator"]
    assert sorted(Path(f).name for f in secret["files"]) == sorted(KEY_FILES)  # what `paramserver keygen` writes
    ports = set()
    for role, job in jobs.items():
        c = _container(job)
        names = [e["name"] for e in c["env"]]
        assert set(names) <= known, f"{role}: {set(names) - known} are not settings the code reads"
        env = _plain_env(job)
        assert env["DMLC_ROLE"] == role
        assert int(env["DMLC_NUM_SERVER"]) == jobs["server"]["spec"]["completions"]
        assert int(env["DMLC_NUM_WORKER"]) == jobs["worker"]["spec"]["completions"]
        ports.add(int(env["DMLC_PS_ROOT_PORT"]))
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
        if role != "scheduler":
            assert env["DMLC_PS_ROOT_URI"] == service["metadata"]["name"]  # through the Service
            assert job["spec"]["completionMode"] == "Indexed"
            assert job["spec"]["parallelism"] == job["spec"]["completions"]
        # the keys: mounted where PS_KEYS points; the public keys and this role's secret only
        (mount,) = c["volumeMounts"]
        assert mount["mountPath"] == env["PS_KEYS"] and mount.get("readOnly") is True
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret["name"]
        items = sorted(i["key"] for i in volume["secret"]["items"])
        assert items == sorted([k for k in KEY_FILES if k.endswith(".key")] + [f"{role}.key_secret"])
        host = {e["name"]: e for e in c["env"]}["PS_HOST"]
        assert host["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    rank = {e["name"]: e for e in _container(jobs["worker"])["env"]}["PS_WORKER_RANK"]
    assert rank["valueFrom"]["fieldRef"]["fieldPath"] == INDEX
    (port,) = ports
    sched = jobs["scheduler"]
    assert service["spec"]["selector"] == {k: v for k, v in sched["spec"]["template"]["metadata"]["labels"].items()
                                           if k in service["spec"]["selector"]}
    assert service["spec"]["ports"][0]["port"] == port == service["spec"]["ports"][0]["targetPort"]
    assert _container(sched)["ports"][0]["containerPort"] == port
    assert _plain_env(sched)["DMLC_PS_ROOT_URI"] == "$(PS_HOST)"  # the scheduler binds its pod's address


def _pod_env(job: dict[str, Any], index: int, port: int, keys: Path, service: str) -> dict[str, str]:
    """The environment Kubernetes gives pod ``index`` of ``job``, on this machine."""
    env: dict[str, str] = {}
    for e in _container(job)["env"]:
        if "valueFrom" in e:
            field = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"status.podIP": "127.0.0.1", INDEX: str(index)}[field]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        env[e["name"]] = value
    if env.get("DMLC_PS_ROOT_URI") == service:
        env["DMLC_PS_ROOT_URI"] = "127.0.0.1"  # the Service's name resolves to the scheduler
    env["DMLC_PS_ROOT_PORT"] = str(port)
    env["PS_KEYS"] = str(keys)
    return env


@pytest.mark.cluster
def test_the_manifests_environment_runs_one_job_on_local_processes(tmp_path: Path) -> None:
    import os

    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "paramserver", "keygen", str(keys)], check=True, capture_output=True,
                   timeout=60)
    jobs = _jobs()
    (service,) = [d["metadata"]["name"] for d in _docs() if d["kind"] == "Service"]
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DMLC_", "PS_"))}
    base.update({"PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)]),
                 "PS_HEARTBEAT_INTERVAL": "0.2", "PS_HEARTBEAT_TIMEOUT": "5"})
    pods = []
    for role in ("scheduler", "server", "worker"):
        job = jobs[role]
        command = _container(job)["command"]
        assert command == ["python", "/app/train.py"]  # the image's script, as in every pod
        for i in range(job["spec"].get("completions", 1)):
            env = {**base, **_pod_env(job, i, port, keys, service)}
            pods.append((f"{role} {i}", subprocess.Popen([sys.executable, TRAIN], env=env, text=True,
                                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    outs = {}
    try:
        for name, p in pods:
            outs[name] = p.communicate(timeout=240)[0]
    finally:
        for _, p in pods:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for _, p in pods] == [0] * len(pods), outs
    n = jobs["worker"]["spec"]["completions"]
    want = [n * (n + 1) // 2] * 4
    assert f"rank 0: sums {want}, expected {want}" in outs["worker 0"], outs  # completion index 0 is rank 0
