"""The augment stage: the assistant's chains through the rationale pipeline, merged with the teacher's."""

import pytest

from sentiray import config, stages
from sentiray.data import schema
from sentiray.data.prepare import run as prepare
from sentiray.teacher.augment import chains_uri, merge


def test_merge_adds_only_correct_chains():
    teacher = [{"id": "a", "rationale": "t"}, {"id": "b", "rationale": "t"}]
    assistant = [
        {"id": "a", "rationale": "x", "teacher_correct": True},
        {"id": "b", "rationale": "y", "teacher_correct": False},
        {"id": "c", "rationale": None, "teacher_correct": True},
    ]
    merged, added = merge(teacher, assistant)
    assert added == 1
    assert [r["id"] for r in merged] == ["a", "b", "a#assistant"]
    assert merged[-1]["rationale"] == "x" and merged[-1]["rationale_source"] == "assistant"


@pytest.mark.slow
def test_augment_runs_assistant_through_pipeline(tmp_path, tiny_models, ray_cluster, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = {"storage": {"root": str(tmp_path)}, "tracking": {"experiment": "aug"}}
    prepare(
        config.validate(
            {**base, "stage": "data", "data": {"format": "synthetic", "task": "msc", "size": 30, "output": "d"}}
        )
    )
    vlm = {"path": tiny_models["vlm"], "kind": "vlm"}
    stages.run_stage(
        config.validate(
            {
                **base,
                "stage": "rationales",
                "data": {"format": "canonical", "input": "d", "output": "r"},
                "teacher": {"backend": "hf", "model": vlm, "max_new_tokens": 16, "batch_size": 8},
            }
        )
    )
    job = config.validate(
        {
            **base,
            "stage": "augment",
            "data": {"format": "canonical", "input": "r", "output": "aug"},
            "model": vlm,
            "augment": {"temperature": 0.7, "max_new_tokens": 16, "batch_size": 8},
        }
    )
    summary = stages.run_stage(job)
    teacher_train = schema.read_rows(str(tmp_path / "r"), "train")
    chains = schema.read_rows(chains_uri(str(tmp_path / "aug")), "train")
    assert sorted(r["id"] for r in chains) == sorted(r["id"] for r in teacher_train)  # every train row, once
    correct = sum(bool(r["teacher_correct"]) for r in chains)
    merged = schema.read_rows(str(tmp_path / "aug"), "train")
    assert summary["added"] == correct
    assert len(merged) == len(teacher_train) + correct
    assert len({r["id"] for r in merged}) == len(merged)
    assert {r["rationale_source"] for r in merged} <= {"teacher", "assistant"}
    assert len(schema.read_rows(str(tmp_path / "aug"), "test")) == len(schema.read_rows(str(tmp_path / "r"), "test"))
    assert stages.run_stage(job)["skipped"] is True
