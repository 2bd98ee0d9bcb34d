"""k8s/: every manifest validates (KubeRay kinds against KubeRay's CRDs, core kinds against
Kubernetes' schemas), rendered manifests are what their sources render to today, and
`sentiray k8s render` embeds a Serve config unchanged."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from sentiray import cli
from sentiray.cluster import k8s
from tests.cluster import k8s_validation as kv

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "k8s").glob("*.yaml"))
SERVE_CONFIGS = sorted((REPO / "serve").glob("*.yaml"))
# One RayJob per pipeline stage: k8s/rayjob-X.yaml runs jobs/X.yaml.
STAGE_JOBS = ["data", "rationales", "assistant", "augment", "student", "evaluate"]

pytestmark = pytest.mark.skipif(not kv.CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {kv.CRD_DIR}")


@pytest.fixture(scope="module")
def crds():
    return kv.load_crd_validators()


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    # Manifests name project paths (jobs/X.yaml, k8s/raycluster.yaml) relative to the root.
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((REPO / "k8s" / "raycluster.yaml").read_text())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _serve_yaml(tmp_path: Path, name: str = "student.yaml", **http_options) -> Path:
    """A standard Ray Serve multi-application config, as `serve deploy` takes it."""
    text = (
        "# the student endpoint\n"
        "applications:\n"
        "  - name: student\n"
        "    route_prefix: /\n"
        "    import_path: sentiray.serving.app:build_app\n"
        "    args:\n"
        "      model: models:/sentiray-student@champion\n"
        "      api_key_env: SENTIRAY_API_KEY\n"
        "    deployments:\n"
        "      - name: SentimentModel\n"
        "        ray_actor_options: {num_gpus: 1}\n"
        "        autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}\n"
    )
    if http_options:
        text += yaml.safe_dump({"http_options": http_options})
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- validation


def test_the_manifests_that_k8s_must_hold_are_there():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "mlflow.yaml", "secrets.example.yaml"} <= names
    kinds = {(d["kind"], d["metadata"]["name"]) for p in MANIFESTS for d in _docs(p)}
    assert ("RayCluster", "sentiray") in kinds
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("StatefulSet", "mlflow-postgres")} <= kinds
    assert {("Secret", "sentiray-s3"), ("Secret", "sentiray-endpoint"), ("Secret", "sentiray-mlflow-db")} <= kinds
    assert {
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("PersistentVolumeClaim", "redis-data"),
        ("Secret", "sentiray-redis"),
    } <= kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path, crds):
    assert kv.validate_text(path.read_text(), crds) == []


def test_validators_reject_what_the_api_server_would(crds, cluster):
    """The checks have teeth: each broken copy of a valid manifest is rejected, naming the field."""

    def errors(mutate):
        doc = copy.deepcopy(cluster)
        mutate(doc)
        return "\n".join(kv.validate_document(doc, crds))

    head = lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "'workerGroupSpec' was unexpected" in errors(lambda d: d["spec"].update(workerGroupSpec=[]))
    assert "replicas: '2' is not of type 'integer'" in errors(
        lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="2")
    )
    assert "num-cpus: 0 is not of type 'string'" in errors(
        lambda d: d["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0})
    )
    assert "limits.memory: '8 GB' does not match" in errors(
        lambda d: head(d)["resources"]["limits"].update(memory="8 GB")
    )
    assert "'resource' was unexpected" in errors(lambda d: head(d).update(resource={}))
    assert "same containerPort/protocol" in errors(
        lambda d: head(d)["ports"].append({"name": "x", "containerPort": 8000})
    )
    assert "'groupName' is a required property" in errors(lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"))
    assert "CEL rules" in errors(lambda d: d["spec"].update(managedBy="someone"))
    assert "DNS-1035" in errors(lambda d: d["metadata"].update(name="Sentiray_Cluster"))
    # core kinds: Kubernetes' own schema, strict
    deployment = next(d for d in _docs(REPO / "k8s" / "mlflow.yaml") if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["nam"] = "x"
    assert "'nam' was unexpected" in "\n".join(kv.validate_document(broken, crds))
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "one"
    assert "'one' is not of type 'integer'" in "\n".join(kv.validate_document(broken, crds))


# --------------------------------------------------------------------------- surviving a head restart


def _ray_cluster_specs() -> dict[str, dict]:
    """Every Ray cluster spec in k8s/: the RayCluster's, each RayJob's and the RayService's."""
    specs = {}
    for path in MANIFESTS:
        for doc in _docs(path):
            spec = {
                "RayCluster": lambda d: d["spec"],
                "RayJob": lambda d: d["spec"]["rayClusterSpec"],
                "RayService": lambda d: d["spec"]["rayClusterConfig"],
            }.get(doc["kind"])
            if spec:
                specs[f"{path.name}:{doc['kind']}"] = (doc, spec(doc))
    return specs


def test_every_ray_cluster_survives_a_head_restart_through_the_redis_of_k8s():
    """GCS fault tolerance as KubeRay documents it: the GCS state in an external Redis
    (k8s/redis.yaml), so a new head pod takes over jobs, actors and Serve applications."""
    redis = {d["kind"]: d for d in _docs(REPO / "k8s" / "redis.yaml")}
    service, deployment = redis["Service"], redis["Deployment"]
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "redis"]
    secrets = {d["metadata"]["name"]: d for d in _docs(REPO / "k8s" / "secrets.example.yaml")}
    specs = _ray_cluster_specs()
    assert {k.split(":")[1] for k in specs} == {"RayCluster", "RayJob", "RayService"}
    for where, (doc, spec) in specs.items():
        ft = spec.get("gcsFaultToleranceOptions")
        assert ft, f"{where}: no gcsFaultToleranceOptions: a head restart would lose the cluster's state"
        assert ft["redisAddress"] == f"{service['metadata']['name']}:{port}", where
        ref = ft["redisPassword"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"], where  # a Secret the example documents
        # KubeRay refuses the older ways alongside the options
        assert k8s.FT_ANNOTATION not in (doc["metadata"].get("annotations") or {}), where
        assert "redis-password" not in spec["headGroupSpec"]["rayStartParams"], where
    # The Redis server reads the same password and keeps its data across its own restarts.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
    assert env["valueFrom"]["secretKeyRef"] == ref
    args = container["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--dir") + 1] == "/data"
    (mount,) = container["volumeMounts"]
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    assert (
        mount["mountPath"] == "/data"
        and volume["persistentVolumeClaim"]["claimName"] == redis["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two pods on the ReadWriteOnce volume


def test_render_refuses_fault_tolerance_that_kuberay_would(tmp_path, cluster, crds):
    def fails(mutate) -> str:
        doc = copy.deepcopy(cluster)
        mutate(doc)
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(doc))
        with pytest.raises(k8s.RenderError) as err:
            k8s.render("jobs/data.yaml", cluster_config=str(path))
        return str(err.value)

    head = lambda d: d["spec"]["headGroupSpec"]
    ft = lambda d: d["spec"]["gcsFaultToleranceOptions"]
    assert "annotation and spec.gcsFaultToleranceOptions are both set" in fails(
        lambda d: d["metadata"].setdefault("annotations", {}).update({k8s.FT_ANNOTATION: "true"})
    )
    assert "redis-password in rayStartParams" in fails(
        lambda d: head(d)["rayStartParams"].update({"redis-password": "x"})
    )
    assert "REDIS_PASSWORD on the head" in fails(
        lambda d: head(d)["template"]["spec"]["containers"][0]["env"].append({"name": "REDIS_PASSWORD", "value": "x"})
    )
    assert "must name the Redis Service" in fails(lambda d: ft(d).update(redisAddress="127.0.0.1:6379"))
    assert "RAY_REDIS_ADDRESS on the head" in fails(
        lambda d: (
            d["spec"].pop("gcsFaultToleranceOptions"),
            head(d)["template"]["spec"]["containers"][0]["env"].append(
                {"name": "RAY_REDIS_ADDRESS", "value": "redis:6379"}
            ),
        )
    )
    # and the schema itself: a misspelt option is an unknown field
    broken = copy.deepcopy(cluster)
    broken["spec"]["gcsFaultToleranceOptions"]["redisAdress"] = "redis:6379"
    assert "'redisAdress' was unexpected" in "\n".join(kv.validate_document(broken, crds))


# --------------------------------------------------------------------------- the cluster and the image


def _pinned(name: str) -> str:
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in constraints.txt")


def test_raycluster_runs_the_pinned_ray_and_autoscales_gpus(cluster):
    version = _pinned("ray")
    assert version == ray.__version__
    spec = cluster["spec"]
    assert spec["rayVersion"] == version
    assert spec["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["minReplicas"] < gpu["maxReplicas"]
    gpu_container = gpu["template"]["spec"]["containers"][0]
    assert int(gpu_container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu_container["image"].endswith(f"ray{version}-py311-gpu")
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    images = {
        c["image"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for c in g["template"]["spec"]["containers"]
    }
    assert all(f"-ray{version}-py311-" in image for image in images), images
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert k8s.serve_port(spec) == 8000
    # every Ray pod reaches MLflow and gets the S3 Secret (never through a job's runtime env)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
        assert {"secretRef": {"name": "sentiray-s3"}} in container["envFrom"]


def test_dockerfile_builds_on_the_pinned_ray_and_keeps_configs_in_the_job_working_dir():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(_pinned('ray'))}$", text, re.MULTILINE)
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_VARIANT} AS sentiray" in text
    assert "pip install --no-cache-dir -c constraints.txt" in text
    assert f"WORKDIR {k8s.IMAGE_WORKDIR}" in text
    assert f"mlflow=={_pinned('mlflow')}" in text
    # the build context holds what the Dockerfile copies and nothing else
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 : ignore.index("*") + 9] == [
        "!Dockerfile",
        "!pyproject.toml",
        "!README.md",
        "!constraints.txt",
        "!platform/",
        "!jobs/",
        "!serve/",
        "!tune/",
    ]


# --------------------------------------------------------------------------- rendered manifests


def _rendered_manifests() -> list[Path]:
    return [p for p in MANIFESTS if k8s.RENDERED_BY in p.read_text()]


def _render_again(path: Path) -> str:
    doc = _docs(path)[0]
    argv = shlex.split(doc["metadata"]["annotations"][k8s.RENDERED_BY])
    assert argv[:3] == ["sentiray", "k8s", "render"]
    args = cli.build_parser().parse_args(argv[1:])
    return k8s.render_file(
        args.source,
        args.overrides,
        cluster_config=args.cluster_config,
        name=args.name,
        entrypoint_num_cpus=args.entrypoint_num_cpus,
        entrypoint_num_gpus=args.entrypoint_num_gpus,
    )


@pytest.mark.parametrize("path", _rendered_manifests(), ids=lambda p: p.name)
def test_rendered_manifest_is_what_its_sources_render_to_today(path):
    """No hand edits, no drift: a change to k8s/raycluster.yaml, a job YAML or a Serve config
    needs `k8s/render.sh` again."""
    assert _render_again(path) == path.read_text(), f"{path.name} is stale: run k8s/render.sh"


@pytest.mark.parametrize("stem", STAGE_JOBS)
def test_a_rayjob_per_stage_runs_its_job_yaml(stem, cluster):
    job_yaml, manifest = REPO / "jobs" / f"{stem}.yaml", REPO / "k8s" / f"rayjob-{stem}.yaml"
    if not job_yaml.exists():
        pytest.skip(f"jobs/{stem}.yaml is not written yet: render k8s/rayjob-{stem}.yaml with k8s/render.sh once it is")
    assert manifest.exists(), f"k8s/rayjob-{stem}.yaml missing: run k8s/render.sh"
    (doc,) = _docs(manifest)
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["sentiray", "run", f"jobs/{stem}.yaml"]
    assert any(a.startswith("storage.root=s3://") for a in argv[3:])
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": k8s.IMAGE_WORKDIR}
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
    assert spec["rayClusterSpec"] == cluster["spec"]
    assert "AWS_" not in spec["runtimeEnvYAML"] and "MLFLOW" not in spec["runtimeEnvYAML"]


def test_the_pipeline_rayjob_runs_every_stage_with_its_own_settings(cluster, capsys):
    from sentiray import pipeline

    def fails(argv) -> str:
        capsys.readouterr()
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    (doc,) = _docs(REPO / "k8s" / "rayjob-pipeline.yaml")
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["sentiray", "pipeline", "jobs/pipeline.yaml"]
    _, steps = pipeline.load("jobs/pipeline.yaml", argv[3:])  # what the job's driver will run
    by_name = {s.name: s.cfg for s in steps}
    assert {c.storage.root for c in by_name.values()} == {"s3://sentiray-artifacts/runs"}
    assert by_name["rationales"].teacher.num_gpus == 4 and by_name["assistant"].train.use_gpu
    assert by_name["student"].model.path.endswith("Qwen2.5-VL-3B-Instruct")
    assert by_name["student"].distill.teacher_path == "s3://sentiray-artifacts/runs/checkpoints/assistant/model"
    assert doc["spec"]["entrypointNumGpus"] == 1 and doc["spec"]["rayClusterSpec"] == cluster["spec"]
    # a wrong stage override fails the render, not the job
    assert "no stage named 'studnet'" in fails(["k8s", "render", "jobs/pipeline.yaml", "studnet:train.lr=1"])
    assert "stage 'student'" in fails(["k8s", "render", "jobs/pipeline.yaml", "student:train.lrr=1"])


# --------------------------------------------------------------------------- sentiray k8s render


def test_render_embeds_the_serve_config_unchanged(tmp_path, crds, cluster, capsys):
    serve = _serve_yaml(tmp_path, host="0.0.0.0", port=8000)
    out = tmp_path / "rayservice.yaml"
    assert cli.main(["k8s", "render", str(serve), "--name", "sentiray-student", "-o", str(out)]) == 0
    assert kv.validate_text(out.read_text(), crds) == []
    (doc,) = _docs(out)
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("ray.io/v1", "RayService", "sentiray-student")
    # byte for byte: the comment survives, so does every key of the Serve file
    assert doc["spec"]["serveConfigV2"] == serve.read_text()
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == yaml.safe_load(serve.read_text())
    assert doc["spec"]["rayClusterConfig"] == cluster["spec"]
    assert "serveConfigV2: |" in out.read_text()  # a readable literal block, not an escaped string
    # without -o: the same text on stdout
    capsys.readouterr()
    assert cli.main(["k8s", "render", str(serve), "--name", "sentiray-student"]) == 0
    assert capsys.readouterr().out == out.read_text()


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_serve_config_renders_to_a_valid_rayservice(path, crds, tmp_path):
    """Cluster-ready Serve configs render; a local one (proxy on 127.0.0.1) is refused for that
    reason alone: with the host changed, the same file renders."""
    text = path.read_text()
    host = (yaml.safe_load(text).get("http_options") or {}).get("host", "0.0.0.0")
    if host in ("127.0.0.1", "localhost"):
        with pytest.raises(k8s.RenderError, match="loopback"):
            k8s.render_file(path.relative_to(REPO))
        text = re.sub(rf"(?m)^(\s*host:\s*){re.escape(host)}", r"\g<1>0.0.0.0", text, count=1)
        path = tmp_path / path.name
        path.write_text(text)
    rendered = k8s.render_file(path if path.is_absolute() else path.relative_to(REPO))
    assert kv.validate_text(rendered, crds) == []
    (doc,) = [d for d in yaml.safe_load_all(rendered) if d]
    assert doc["spec"]["serveConfigV2"] == text


def test_the_endpoint_rayservice_is_rendered_from_a_serve_config(crds):
    path = REPO / "k8s" / "rayservice.yaml"
    if not path.exists():
        pytest.skip("k8s/rayservice.yaml not rendered yet: it needs a cluster-ready Serve config (see k8s/render.sh)")
    (doc,) = _docs(path)
    source = REPO / doc["metadata"]["annotations"][k8s.SOURCE]
    assert source.parent == REPO / "serve"
    assert doc["spec"]["serveConfigV2"] == source.read_text()


def test_render_rejects_what_would_not_work_on_the_cluster(tmp_path, capsys):
    def fails(argv) -> str:
        capsys.readouterr()
        assert cli.main(argv) == 2
        return capsys.readouterr().err

    loopback = _serve_yaml(tmp_path, "loopback.yaml", host="127.0.0.1")
    assert "loopback" in fails(["k8s", "render", str(loopback)])
    other_port = _serve_yaml(tmp_path, "port.yaml", port=9000)
    assert "http_options.port is 9000" in fails(["k8s", "render", str(other_port)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - name: x\n    import_path: 42\n    route_prefix: /\nhttp_options: {port: nope}\n")
    assert "not a valid Ray Serve config" in fails(["k8s", "render", str(bad)])
    typo = tmp_path / "typo.yaml"
    typo.write_text(_serve_yaml(tmp_path).read_text().replace("api_key_env:", "api_key_var:"))
    err = fails(["k8s", "render", str(typo)])
    assert "application 'student' args" in err and "api_key_var: unknown key" in err
    neither = tmp_path / "neither.yaml"
    neither.write_text("hello: world\n")
    assert "neither a Serve config" in fails(["k8s", "render", str(neither)])
    err = fails(["k8s", "render", "jobs/data.yaml", "data.size=-1"])
    assert "data.size" in err and "greater than 0" in err
    job = tmp_path / "job.yaml"
    job.write_text("stage: data\ndata: {format: synthetic}\n")
    assert "outside this project" in fails(["k8s", "render", str(job)])
    assert "overrides apply to job YAMLs only" in fails(["k8s", "render", str(_serve_yaml(tmp_path)), "a.b=1"])
    assert "must be one ray.io/v1 RayCluster" in fails(
        ["k8s", "render", "jobs/data.yaml", "--cluster-config", "k8s/mlflow.yaml"]
    )
    # a failed render never truncates the file it was to write
    target = tmp_path / "keep.yaml"
    target.write_text("old\n")
    fails(["k8s", "render", str(loopback), "-o", str(target)])
    assert target.read_text() == "old\n"
