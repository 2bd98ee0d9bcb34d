"""The MulCoT family's own checks, in-process (no Ray): what fails before training starts,
what a row becomes, what is skipped and why."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from sentiray import config
from sentiray.config import ConfigError
from sentiray.data import schema, storage
from sentiray.data.prepare import run as prepare
from sentiray.families.mulcot import MulCoTFamily, row_image


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mulcot")
    prepare(
        config.validate(
            {
                "stage": "data",
                "storage": {"root": str(root)},
                "data": {"format": "synthetic", "task": "msc", "size": 40, "output": "d"},
            }
        )
    )
    return root


def family(root, tiny_models, **overrides) -> MulCoTFamily:
    raw = {
        "stage": "train",
        "storage": {"root": str(root)},
        "data": {"format": "canonical", "input": "d"},
        "model": {"path": tiny_models["vlm"]},
        "train": {},
        "mulcot": {"chain_column": "gold_chain"},
    }
    return MulCoTFamily(config.validate(config.apply_overrides(raw, [f"{k}={v}" for k, v in overrides.items()])))


def test_a_missing_or_empty_chain_column_fails_in_the_check(data, tiny_models):
    with pytest.raises(ConfigError, match=r"mulcot.chain_column: .* has no column 'rationale' \(columns: id, task"):
        family(data, tiny_models, **{"mulcot.chain_column": "rationale"}).check()
    # a copy of the data whose chains are all empty
    empty = data / "empty"
    storage.copy_dir(str(data / "d"), str(empty))
    for part in (empty / "train").glob("*.parquet"):
        table = pq.read_table(part)
        table = table.set_column(table.column_names.index("gold_chain"), "gold_chain", [[""] * table.num_rows])
        pq.write_table(table, part)
    with pytest.raises(ConfigError, match=r"column 'gold_chain' of .*empty train is empty in every row"):
        family(data, tiny_models, **{"data.input": str(empty)}).check()
    family(data, tiny_models).check()  # the real data passes


def test_a_student_without_distill_and_old_train_fields_fail_naming_the_fix(data, tiny_models):
    with pytest.raises(ConfigError, match="mulcot.role 'student' needs a distill section"):
        family(data, tiny_models, **{"mulcot.role": "student"}).check()
    raw = {"stage": "train", "data": {}, "model": {"path": "m"}, "train": {"role": "student", "w_chain": 2}}
    with pytest.raises(ConfigError, match=r"train.role is now mulcot.role; train.w_chain is now mulcot.w_chain"):
        config.validate(raw)


def test_images_are_resized_to_the_family_input_size(data, tiny_models):
    buf = io.BytesIO()
    Image.new("RGB", (1000, 150), (200, 30, 30)).save(buf, format="PNG")
    assert row_image({"image": buf.getvalue()}, 280).size == (280, 280)
    fam = family(data, tiny_models, **{"mulcot.image_size": 48})
    row = schema.read_rows(str(data / "d"), "train")[0]
    assert row_image(row, fam.settings.image_size).size == (48, 48)
    example = fam.transform(row)
    assert example["l"].pixel_values.shape[-2:] == (32, 32)  # then the tiny processor's own size


def test_a_row_whose_target_does_not_fit_is_skipped_with_its_reason(data, tiny_models):
    row = schema.read_rows(str(data / "d"), "train")[0]
    fam = family(data, tiny_models, **{"mulcot.max_length": 60})
    example = fam.transform(row)
    assert example["id"] == row["id"]
    assert example["skip"].startswith("chain stream needs") and "over mulcot.max_length=60" in example["skip"]
    assert "skip" not in family(data, tiny_models).transform(row)


def test_kd_targets_must_tokenize_alike_and_the_teacher_loads_in_training_precision(data, tiny_models, tmp_path):
    from tokenizers import normalizers
    from transformers import AutoProcessor

    # an assistant whose tokenizer lowercases: the same vocabulary, other target tokens
    teacher = tmp_path / "teacher"
    storage.copy_dir(tiny_models["vlm"], str(teacher))
    processor = AutoProcessor.from_pretrained(str(teacher))
    processor.tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    processor.save_pretrained(str(teacher))
    fam = family(
        data, tiny_models, **{"mulcot.role": "student", "distill.teacher_path": str(teacher), "train.precision": "bf16"}
    )
    fam.build_model()
    assert next(fam.teacher.parameters()).dtype == torch.bfloat16
    row = next(r for r in schema.read_rows(str(data / "d"), "train") if any(c.isupper() for c in r["gold_chain"]))
    with pytest.raises(ConfigError, match=rf"row '{row['id']}': the chain target tokenizes differently"):
        fam.transform(row)
