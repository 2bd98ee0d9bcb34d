"""The rationale output's on-disk contract, on real files: teacher-side rejects are asked again
and superseded (each id once, even after a crash between the two writes), content rejects stay;
one run at a time holds the output's lease (local disk and a loopback S3 server)."""

import json
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from sentiray.data import schema, storage
from sentiray.teacher import pipeline
from sentiray.teacher.pipeline import OutputLease, OutputLocked, ShardStore

TEACHER = "teacher error: gave up after 1 retries (last: HTTP 500: boom)"
CONTENT = "unreadable image: cannot decode image"


def rows(*ids: str) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "rationale": pa.array([f"chain {i}" for i in ids])})


def rejects(**reasons: str) -> pa.Table:
    return pa.Table.from_pylist(
        [{"split": "train", "id": i, "source": "s", "reason": r, "raw": ""} for i, r in reasons.items()],
        schema=schema.REJECT_SCHEMA,
    )


def on_disk(out: str) -> tuple[list[str], dict[str, str]]:
    """(ids in train rows, {id: reason} of rejects), failing on any id seen twice."""
    row_ids = schema.read_table(out, "train", columns=["id"]).column("id").to_pylist()
    recs = schema.read_table(out, "rejects", columns=["id", "reason"]).to_pylist()
    seen = row_ids + [r["id"] for r in recs]
    assert len(seen) == len(set(seen)), f"an id twice: {sorted(seen)}"
    return sorted(row_ids), {r["id"]: r["reason"] for r in recs}


def test_teacher_rejects_are_retried_and_superseded_content_rejects_stay(tmp_path):
    out = str(tmp_path / "out")
    store = ShardStore(out, "train")
    store.commit(rows("a", "b"), rejects(c=TEACHER, d=CONTENT))
    # a new run: c is to be asked again, d stays done
    store = ShardStore(out, "train")
    assert store.done == {"a", "b", "d"} and store.retry == {"c": "train-part-00000.parquet"}
    assert store.next_index == 1
    # c answered now: committed in a new shard, its old reject record dropped
    store.commit(rows("c"), rejects())
    assert on_disk(out) == (["a", "b", "c"], {"d": CONTENT})
    # e fails again on the retry: the newer record replaces the older one
    store.commit(rows(), rejects(e=TEACHER))
    store = ShardStore(out, "train")
    assert store.retry == {"e": "train-part-00002.parquet"}
    store.commit(rows(), rejects(e=TEACHER.replace("HTTP 500", "HTTP 503")))
    assert on_disk(out)[1] == {"d": CONTENT, "e": TEACHER.replace("HTTP 500", "HTTP 503")}
    assert sorted(storage.listdir(storage.join(out, "rejects"))) == [
        "train-part-00000.parquet",
        "train-part-00003.parquet",
    ]


def test_a_crash_between_commit_and_supersede_is_repaired_on_open(tmp_path):
    out = str(tmp_path / "out")
    store = ShardStore(out, "train")
    store.commit(rows("a"), rejects(b=TEACHER, c=TEACHER, d=CONTENT))
    # as if a run committed b's row and c's newer reject in shard 1, then died before superseding
    storage.write_bytes(
        storage.join(out, "rejects", "train-part-00001.parquet"),
        pipeline._parquet_bytes(rejects(c=TEACHER.replace("500", "502"))),
    )
    storage.write_bytes(storage.join(out, "train", "part-00001.parquet"), pipeline._parquet_bytes(rows("b")))
    store = ShardStore(out, "train")
    assert store.done == {"a", "b", "d"} and store.retry == {"c": "train-part-00001.parquet"}
    assert on_disk(out) == (["a", "b"], {"c": TEACHER.replace("500", "502"), "d": CONTENT})
    assert store.next_index == 2


def test_reject_causes_are_named():
    assert pipeline.is_teacher_side(TEACHER) and not pipeline.is_teacher_side(CONTENT)
    assert pipeline.teacher_cause(TEACHER) == "HTTP 5xx"
    assert pipeline.teacher_cause("teacher error: gave up after 2 retries (last: HTTP 429: slow down)") == "HTTP 429"
    assert pipeline.teacher_cause("teacher error: gave up after 2 retries (last: no answer within 1s)") == "timeout"
    assert (
        pipeline.teacher_cause(
            "teacher error: gave up after 2 retries (last: cannot connect to "
            "http://x/v1/chat/completions (ConnectionError))"
        )
        == "connection refused"
    )


# ----------------------------------------------------------------------------- the lease


def _lease_file(out: str) -> dict:
    return storage.read_json(storage.join(out, pipeline.LEASE_FILE))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_one_run_at_a_time_holds_the_output(tmp_path, request, where):
    out = str(tmp_path / "out") if where == "local" else request.getfixturevalue("s3_uri")
    first = OutputLease(out, ttl_s=60)
    first.acquire()
    try:
        assert _lease_file(out)["run"] == first.me["run"]
        second = OutputLease(out, ttl_s=60)
        with pytest.raises(OutputLocked, match=rf"being written by another run \(run {first.me['run']} of pid "):
            second.acquire()
        first.check()  # still ours
    finally:
        first.release()
    assert not storage.exists(storage.join(out, pipeline.LEASE_FILE))
    second.acquire()  # free now
    second.release()


def test_abandoned_leases_are_taken_over_live_ones_are_not(tmp_path):
    out = str(tmp_path / "out")
    path = storage.join(out, pipeline.LEASE_FILE)
    # a run on this host whose process is gone (killed -9): taken over at once
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = pipeline._started_at(proc.pid)
    dead = {
        "run": "dead",
        "host": "h",
        "space": pipeline._process_space(),
        "pid": proc.pid,
        "pid_started": started,
        "heartbeat": time.time(),
    }
    storage.write_json(path, {**dead, "pid": proc.pid})
    with pytest.raises(OutputLocked, match="run dead of pid"):  # alive yet
        OutputLease(out, ttl_s=60).acquire()
    proc.kill()
    proc.wait()
    lease = OutputLease(out, ttl_s=60)
    lease.acquire()
    assert _lease_file(out)["run"] == lease.me["run"]
    lease.release()
    # a run elsewhere: alive while its heartbeat is fresh, abandoned after ttl_s without one
    elsewhere = {"run": "far", "host": "other", "space": "other/boot/1", "pid": 1, "heartbeat": time.time() - 5}
    storage.write_json(path, elsewhere)
    with pytest.raises(OutputLocked, match="run far of pid 1 on other"):
        OutputLease(out, ttl_s=60).acquire()
    storage.write_json(path, {**elsewhere, "heartbeat": time.time() - 120})
    lease = OutputLease(out, ttl_s=60)
    lease.acquire()
    # the holder notices when another run took its lease, before committing anything more
    storage.write_text(path, json.dumps({**elsewhere, "run": "usurper"}))
    with pytest.raises(OutputLocked, match="lost the lease .* run usurper"):
        lease.check()
    lease.release()
    assert _lease_file(out)["run"] == "usurper"  # not ours: left alone
