"""A real multi-node Ray cluster on loopback (tests.cluster.multinode): stages submitted as Ray
jobs run across worker nodes with every output on the loopback S3 server, and survive a worker
node lost mid-run (its raylet killed by pid; a replacement node joins, as an autoscaler adds one).

One cluster for the whole module: a head without CPUs and two worker nodes with 2 CPUs each.
A test that kills a node starts its replacement, so each test finds two worker nodes.
Every job gets its S3 settings the documented way, in the submission's runtime env (the nodes
do not have them), with token authentication on as a user has it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sentiray import cli, pipeline
from sentiray.cluster import submit as sj
from sentiray.data import schema, storage, synthetic
from tests.cluster.helpers import BIN, auth_headers, user_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# What the fault tests measured, printed at the end of the module (the numbers of the README table).
FAULTS: list[tuple[str, str, float]] = []


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    for fault, lost, seconds in FAULTS:
        print(f"\nfault: {fault} | lost: {lost} | recovered in {seconds:.1f} s")


@pytest.fixture(scope="module")
def s3_root(s3_server) -> str:
    return f"s3://sentiray-test/multinode-{time.time_ns()}"


@pytest.fixture(scope="module")
def s3_models(tiny_models, s3_root) -> dict[str, str]:
    """The tiny models on S3: a node reads its model from shared storage, not from a local folder."""
    out = {}
    for kind in ("vlm",):
        storage.upload_dir(tiny_models[kind], f"{s3_root}/models/{kind}")
        out[kind] = f"{s3_root}/models/{kind}"
    return out


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sentiray(*argv: str, **popen) -> subprocess.Popen:
    """`sentiray ...` in its own process, as a user runs it, for commands that outlive a step of the test."""
    return subprocess.Popen(
        [str(BIN / "sentiray"), *argv],
        env=user_env(),
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def job_actors(cluster, submission_id: str, class_part: str) -> list[dict]:
    """The job's actors whose class name contains ``class_part`` (ALIVE or not), from Ray's state API."""
    from ray.util.state.common import ListApiOptions, StateResource

    job = sj.connect(cluster.address).get_job_info(submission_id)
    if not job.job_id:
        return []
    actors = cluster.state().list(
        StateResource.ACTORS,
        options=ListApiOptions(filters=[("job_id", "=", job.job_id)], detail=True, limit=10_000),
        raise_on_missing_output=False,
    )
    actors = [a if isinstance(a, dict) else a.__dict__ for a in actors]
    return [a for a in actors if class_part in a["class_name"]]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout}s")


def parts(uri: str, split: str) -> list[str]:
    return [n for n in storage.listdir(storage.join(uri, split)) if n.endswith(".parquet")]


def ids(uri: str, split: str) -> list[str]:
    return schema.read_table(uri, split, columns=["id"]).column("id").to_pylist()


# --------------------------------------------------------------------------- shared storage only


def test_a_node_local_storage_root_fails_before_anything_starts(multinode, tmp_path, capsys):
    address = multinode.address
    client = sj.connect(address)
    before = len(sj.list_jobs(client))
    local = tmp_path / "out"
    code, _, err = run_cli(
        capsys,
        "submit",
        "jobs/data.yaml",
        f"storage.root={local}",
        "data.size=20",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--wait",
    )
    assert code == 2
    assert f"data.output is '{local}/data/msc': a path on one node's own disk, but this Ray cluster has 3 nodes" in err
    assert "storage.root=s3://" in err and "Traceback" not in err

    pipe = tmp_path / "p.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "name": "local",
                "storage": {"root": str(local)},
                "tracking": {"enabled": False},
                "stages": [{"name": "data", "config": "jobs/data.yaml"}],
            }
        )
    )
    code, _, err = run_cli(capsys, "pipeline", str(pipe), "--address", address, "--quiet")
    assert code == 2 and "stage 'data': data.output is" in err and "3 nodes" in err
    assert len(sj.list_jobs(client)) == before  # nothing was submitted
    assert not local.exists()  # nothing was written either (no state file)

    # The same check inside a job (plain `ray job submit`, a RayJob): the stage's own start.
    check = (
        "from sentiray import config, runtime; "
        f"runtime.require_shared_storage(config.load('jobs/data.yaml', ['storage.root={local}']))"
    )
    proc = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={address}",
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "-c",
            check,
        ],
        env={**user_env(), "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "a path on one node's own disk, but this Ray cluster has 3 nodes" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- rationales: a node lost


SPLITS = ["train"]  # the train split alone: 48 rows in 12 shards, enough for a kill mid-run


def test_rationales_survive_a_worker_node_lost_mid_run(multinode, s3_root, s3_models):
    """hf teacher actors on both worker nodes; one node's raylet is killed once the first shard is
    committed. Ray Data restarts the lost actor and reruns its tasks; every id ends up in the
    output exactly once, and `sentiray submit --wait` says how many tasks were retried."""
    data_uri, out = f"{s3_root}/rat/in", f"{s3_root}/rat/out"
    # Enough work (80 train rows, 48-token answers) that both actors are still busy when the node
    # goes: with less, the run could end before the lost actor was needed again (nothing to retry).
    schema.write_dataset(synthetic.generate("msc", 100, seed=5), data_uri)
    expected = ids(data_uri, "train")
    args = [
        "submit",
        "jobs/rationales.yaml",
        f"storage.root={s3_root}",
        f"data.input={data_uri}",
        f"data.output={out}",
        f"teacher.model.path={s3_models['vlm']}",
        "teacher.concurrency=2",
        "teacher.num_cpus=1",
        "teacher.batch_size=2",
        "teacher.shard_rows=4",
        "teacher.max_new_tokens=48",
        "teacher.temperature=1.0",
        "teacher.lrsa_rationales=false",
        f"teacher.splits={SPLITS}",
        "teacher.rationalize_splits=[]",
        "tracking.enabled=false",
        "--address",
        multinode.address,
        "--wait",
    ]
    waiting = sentiray(*args)
    try:
        submission_id = waiting.stdout.readline().strip()
        assert submission_id.startswith("sentiray-rationales-"), waiting.stderr.read()

        def pool_at_work():
            """{node name: actor id} once both teacher actors are alive and a shard is on S3."""
            alive = [a for a in job_actors(multinode, submission_id, "MapWorker") if a["state"] == "ALIVE"]
            where = {multinode.node_name(a["node_id"]): a["actor_id"] for a in alive}
            return where if len(alive) == 2 and parts(out, "train") else None

        pool = wait_until(pool_at_work, 240, "both teacher actors alive and a shard committed")
        assert set(pool) == {"a", "b"}  # the pool spans both worker nodes (the head has no CPUs)
        committed = len(parts(out, "train"))
        killed = multinode.kill_raylet("a")
        multinode.add_worker("c", num_cpus=2)  # the replacement, as an autoscaler would add it

        def pool_whole_again():
            [actor] = [a for a in job_actors(multinode, submission_id, "MapWorker") if a["actor_id"] == pool["a"]]
            # ALIVE once restarted; DEAD again (REF_DELETED) if the job ended between two polls
            return actor if actor["num_restarts"] >= 1 and actor["state"] in ("ALIVE", "DEAD") else None

        # Ray Data reruns the lost actor's tasks on that actor once it has restarted (a new process
        # that loads the model again), wherever a CPU is free.
        try:
            restarted = wait_until(pool_whole_again, 240, "the lost teacher actor restarted", poll=1)
        except TimeoutError as exc:
            actors = [
                {k: a.get(k) for k in ("actor_id", "state", "num_restarts", "node_id", "death_cause")}
                for a in job_actors(multinode, submission_id, "MapWorker")
            ]
            job = sj.connect(multinode.address).get_job_info(submission_id)
            raise AssertionError(f"{exc}; actors {actors}; nodes {multinode.alive_nodes()}; job {job.status}") from exc
        recovered = time.monotonic() - killed
        assert multinode.node_name(restarted["node_id"]) in ("b", "c")
        _, stderr = waiting.communicate(timeout=300)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr[-3000:]
    assert committed < 20, "the node was lost mid-run"  # of 20 shards of 4 rows
    assert f"{submission_id}: SUCCEEDED" in stderr
    retried = [line for line in stderr.splitlines() if "task(s) retried" in line]
    assert len(retried) == 1, stderr[-2000:]
    n_retried = int(retried[0].split(": ")[1].split(" task(s)")[0])
    assert n_retried >= 1

    # Every id exactly once (rows and rejects together), read back from S3.
    rejects = ids(out, "rejects") if parts(out, "rejects") else []
    assert sorted(ids(out, "train") + rejects) == sorted(expected)
    assert schema.read_manifest(out)["counts"]["train"] + len(rejects) == len(expected) == 80
    FAULTS.append(
        (
            "rationales: worker node's raylet killed mid-run (2 hf actors, 1 per node)",
            f"nothing; {n_retried} task(s) retried",
            recovered,
        )
    )


# --------------------------------------------------------------------------- a pipeline, training across nodes

# The training settings of the pipeline's assistant and of the node-failure run: 128 train rows,
# 2 workers x 8 rows a step, one epoch = 8 optimizer steps, checkpoints at steps 3 and 6.
TRAIN = [
    "mulcot.chain_column=gold_chain",
    "train.num_workers=2",
    "train.placement=STRICT_SPREAD",
    "train.zero_stage=2",
    "train.epochs=1",
    "train.batch_size=8",
    "train.lr=5e-3",
    "train.log_every=2",
    "train.checkpoint_every=3",
    "train.keep_checkpoints=3",
]
STEPS = 8
# Files a stage writes as an output: none may be on a node's own disk.
OUTPUT_NAMES = {"_SUCCESS.json", "best.json", "_manifest.json", "report.json", "state.json"}


def node_local_outputs(cluster) -> list[str]:
    """Outputs (or Ray Train checkpoints) found under any node's temp dir: where a job's
    working directory, its workers' scratch files and Ray's own files live."""
    found = []
    for node in cluster.nodes.values():
        for path in Path(node.temp_dir).rglob("*"):
            if path.name in OUTPUT_NAMES or (path.is_dir() and path.name.startswith("checkpoint_")):
                found.append(str(path))
    return found


def registered_checkpoints(run_dir: str) -> list[str]:
    """The checkpoints Ray Train has registered (its snapshot on S3), not merely uploaded:
    a restart resumes from the latest of these."""
    snapshot = f"{run_dir}/checkpoint_manager_snapshot.json"
    if not storage.exists(snapshot):
        return []
    return [r["checkpoint_dir_name"] for r in storage.read_json(snapshot).get("checkpoint_results", [])]


def train_worker_nodes(cluster, submission_id: str) -> dict[str, str]:
    """{actor id: node name} of the job's Ray Train workers that are alive now."""
    return {
        a["actor_id"]: cluster.node_name(a["node_id"])
        for a in job_actors(cluster, submission_id, "RayTrainWorker")
        if a["state"] == "ALIVE"
    }


@pytest.fixture(scope="module")
def pipeline_on_s3(multinode, s3_root, s3_models, tmp_path_factory):
    """`sentiray pipeline --address` on the cluster: data -> assistant -> evaluate, one Ray job
    each, storage.root on S3. While the assistant trains, its workers' nodes are recorded."""
    root = f"{s3_root}/pipe"
    pipe = tmp_path_factory.mktemp("pipe") / "pipeline.yaml"
    pipe.write_text(
        yaml.safe_dump(
            {
                "name": "multinode",
                "storage": {"root": root},
                "tracking": {"enabled": False},
                "stages": [
                    {
                        "name": "data",
                        "config": "jobs/data.yaml",
                        "overrides": ["data.size=160", "data.output=data/msc"],
                    },
                    {
                        "name": "assistant",
                        "config": "jobs/assistant.yaml",
                        "inputs": {"data.input": "data"},
                        "overrides": [f"model.path={s3_models['vlm']}", *TRAIN],
                    },
                    {
                        "name": "evaluate",
                        "config": "jobs/evaluate.yaml",
                        "inputs": {"data.input": "data", "model.path": "assistant"},
                        "overrides": ["evaluate.limit=4", "mulcot.generate_chains=false"],
                    },
                ],
            }
        )
    )
    start = time.monotonic()
    proc = sentiray("pipeline", str(pipe), "--address", multinode.address, "--quiet")
    workers: dict[str, str] = {}
    try:
        while proc.poll() is None:  # record where the assistant's workers run, while they run
            for job in sj.list_jobs(sj.connect(multinode.address)):
                if (job.metadata or {}).get("sentiray_stage") == "train" and sj.status_of(job) == "RUNNING":
                    workers.update(train_worker_nodes(multinode, job.submission_id))
            time.sleep(1)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return {"root": root, "out": out, "workers": workers, "seconds": time.monotonic() - start}


def test_pipeline_runs_every_stage_as_a_job_with_outputs_on_s3_only(multinode, pipeline_on_s3):
    root = pipeline_on_s3["root"]
    state = storage.read_json(f"{root}/{pipeline.STATE_DIR}/multinode.json")  # the state file is on S3 too
    client = sj.connect(multinode.address)
    for name in ("data", "assistant", "evaluate"):
        assert state["stages"][name]["status"] == "succeeded"
        assert sj.status_of(client.get_job_info(state["stages"][name]["job_id"])) == "SUCCEEDED"
        assert state["stages"][name]["output"].startswith(f"{root}/")
    # Each stage read the previous one's output from S3: the data set, the model, the report.
    assert schema.read_manifest(f"{root}/data/msc")["counts"] == {"train": 128, "dev": 16, "test": 16}
    done = storage.read_json(f"{root}/checkpoints/assistant/_SUCCESS.json")
    assert done["final"]["step"] == STEPS and done["model"] == f"{root}/checkpoints/assistant/model"
    assert storage.exists(f"{root}/checkpoints/assistant/model/config.json")
    checkpoints = [
        n
        for n in storage.listdir(f"{root}/checkpoints/assistant/ray")
        if n.startswith("checkpoint_") and not n.endswith(".json")
    ]
    assert len(checkpoints) == 3  # steps 3 and 6, and the epoch's end
    assert storage.read_json(f"{root}/reports/student/report.json")["n"] == 4
    assert node_local_outputs(multinode) == []
    print(
        "\npipeline seconds per stage:",
        {n: state["stages"][n].get("seconds") for n in state["stages"]},
        f"total {pipeline_on_s3['seconds']:.0f}",
    )


def test_training_ran_its_two_workers_on_two_nodes(pipeline_on_s3):
    workers = pipeline_on_s3["workers"]
    assert len(workers) == 2, workers  # ZeRO-2 over gloo between them
    assert len(set(workers.values())) == 2 and "head" not in workers.values() and None not in workers.values()


def test_training_survives_a_worker_node_lost_mid_epoch(multinode, s3_root, s3_models, pipeline_on_s3):
    """The issue's scenario: `sentiray submit jobs/assistant.yaml ... --env AWS_* --wait` to the
    cluster, STRICT_SPREAD over two nodes; one node's raylet is killed after the step-3
    checkpoint. Ray Train restarts the worker group once a replacement node has joined, from
    the latest checkpoint, and the run ends at the same step as the uninterrupted one."""
    root = f"{s3_root}/fault"
    out = f"{root}/checkpoints/assistant"
    args = [
        "submit",
        "jobs/assistant.yaml",
        f"storage.root={root}",
        f"data.input={pipeline_on_s3['root']}/data/msc",
        f"model.path={s3_models['vlm']}",
        *TRAIN,
        "train.max_failures=2",
        "tracking.enabled=false",
        "--env",
        "AWS_ENDPOINT_URL",
        "--env",
        "AWS_ACCESS_KEY_ID",
        "--env",
        "AWS_SECRET_ACCESS_KEY",
        "--env",
        "AWS_DEFAULT_REGION",
        "--address",
        multinode.address,
        "--wait",
    ]
    waiting = sentiray(*args)
    try:
        submission_id = waiting.stdout.readline().strip()
        assert submission_id.startswith("sentiray-train-"), waiting.stderr.read()

        def first_checkpoint_with_workers_on_two_nodes():
            workers = train_worker_nodes(multinode, submission_id)
            return workers if registered_checkpoints(f"{out}/ray") and len(set(workers.values())) == 2 else None

        workers = wait_until(first_checkpoint_with_workers_on_two_nodes, 300, "a checkpoint, workers on two nodes")
        victim = min(workers.values())
        killed = multinode.kill_raylet(victim)
        multinode.add_worker(f"{victim}2", num_cpus=2)  # the replacement node joins

        def new_group_alive():
            now = train_worker_nodes(multinode, submission_id)
            return now if len(now) == 2 and not set(now) & set(workers) else None

        regrouped = wait_until(new_group_alive, 180, "a new worker group")
        recovered = time.monotonic() - killed
        _, stderr = waiting.communicate(timeout=400)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr[-3000:]
    assert len(set(regrouped.values())) == 2 and victim not in regrouped.values()
    done = storage.read_json(f"{out}/_SUCCESS.json")
    uninterrupted = storage.read_json(f"{pipeline_on_s3['root']}/checkpoints/assistant/_SUCCESS.json")
    assert done["final"]["step"] == uninterrupted["final"]["step"] == STEPS  # the same optimizer steps
    assert done["final"]["resumed_from_step"] in (3, 6)  # restarted from a checkpoint, not from step 0
    assert storage.exists(f"{out}/model/config.json")
    assert node_local_outputs(multinode) == []
    FAULTS.append(
        (
            "training: worker node's raylet killed mid-epoch (ZeRO-2, STRICT_SPREAD)",
            f"nothing; resumed from step {done['final']['resumed_from_step']}, ended at step {STEPS}",
            recovered,
        )
    )


# --------------------------------------------------------------------------- serving under load: a node lost


def serve_replicas(cluster, app: str, deployment: str) -> list[dict]:
    """The deployment's replicas as Serve's REST API lists them (state, node)."""
    import requests

    r = requests.get(f"{cluster.address}/api/serve/applications/", headers=auth_headers(), timeout=10)
    r.raise_for_status()
    apps = r.json().get("applications") or {}
    return ((apps.get(app) or {}).get("deployments") or {}).get(deployment, {}).get("replicas") or []


def running_on(cluster, replicas: list[dict]) -> list[str]:
    return sorted(cluster.node_name(r["node_id"]) or "?" for r in replicas if r["state"] == "RUNNING")


class Load:
    """A bounded load: ``clients`` threads, each sending one request after the other, until stopped.
    Every answer is recorded as (time, HTTP status), an error without a status as 0."""

    def __init__(self, url: str, body: dict, clients: int = 4):
        import threading

        self.url, self.body, self.clients = url, body, clients
        self.results: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _client(self) -> None:
        import requests

        session = requests.Session()
        while not self.stop.is_set():
            try:
                status = session.post(self.url, json=self.body, timeout=30).status_code
            except requests.RequestException:
                status = 0
            self.results.append((time.monotonic(), status))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_serving_survives_a_worker_node_lost_under_load(multinode, pipeline_on_s3, tmp_path):
    """Two replicas of the trained model, one per worker node (max_replicas_per_node: 1), behind
    the head's proxy; a bounded load runs while one node's raylet is killed, then a
    replacement node joins. Deployed with Ray's own `serve deploy` from a Serve YAML."""
    from tests.conftest import free_port

    port = free_port()
    env_vars = {k: v for k, v in user_env().items() if k.startswith("AWS_")}  # the nodes have none
    config = {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "student",
                "route_prefix": "/",
                "import_path": "sentiray.serving.app:build_app",
                "runtime_env": {"env_vars": env_vars},
                "args": {"model": f"{pipeline_on_s3['root']}/checkpoints/assistant/model", "max_batch_size": 4},
                "deployments": [
                    {
                        "name": "SentimentModel",
                        "max_replicas_per_node": 1,
                        "autoscaling_config": {"min_replicas": 2, "max_replicas": 2},
                        "ray_actor_options": {"num_cpus": 1},
                    }
                ],
            }
        ],
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(BIN / "serve"), "deploy", str(path), "--address", multinode.address],
        env={**user_env(), "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    two = wait_until(
        lambda: len(r := running_on(multinode, serve_replicas(multinode, "student", "SentimentModel"))) == 2 and r,
        240,
        "two replicas running",
    )
    assert len(set(two)) == 2 and "head" not in two  # one replica on each worker node

    url = f"http://127.0.0.1:{port}/v1/sentiment"
    body = {"text": "the concert tonight was wonderful"}
    with Load(url, body) as load:
        time.sleep(5)  # steady state first
        victim = two[0]
        killed = multinode.kill_raylet(victim)
        time.sleep(5)  # the load runs on one replica meanwhile
        multinode.add_worker(f"{victim}3", num_cpus=2)
        returned = time.monotonic()
        wait_until(
            lambda: len(running_on(multinode, serve_replicas(multinode, "student", "SentimentModel"))) == 2,
            60,
            "back to two replicas within 60 s of the node's return",
        )
        recovered = time.monotonic()
        time.sleep(5)  # and answering after recovery
    results = load.results
    failed = [(t, s) for t, s in results if s != 200]
    assert len(results) >= 100, f"only {len(results)} requests: the load did not run"
    assert len(failed) <= 0.02 * len(results), (len(failed), len(results), sorted({s for _, s in failed}))
    after = [s for t, s in results if t > recovered]
    assert after and all(s < 500 for s in after), sorted(set(after))
    assert all(s == 200 for t, s in results if t < killed)  # the baseline was clean
    FAULTS.append(
        (
            f"serving: worker node's raylet killed under load ({load.clients} clients, 2 replicas)",
            f"{len(failed)} of {len(results)} requests ({100 * len(failed) / len(results):.1f}%)",
            recovered - returned,
        )
    )
    subprocess.run(
        [str(BIN / "serve"), "shutdown", "--address", multinode.address, "-y"],
        env={**user_env(), "RAY_AUTH_MODE": "token"},
        capture_output=True,
        timeout=120,
        check=False,
    )
