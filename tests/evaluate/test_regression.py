"""MMSA's metrics (evaluate/regression.py), against values worked out by hand from the reference code
on vectors that hit its edge cases, and against a transcription of the reference on random vectors."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, r2_score

from sentiray.evaluate import regression, score

# --------------------------------------------------------------------------- hand-computed


def test_mosei_edge_cases_by_hand():
    # pred 3.7 > 3: clipped for Acc-7 (3) and Acc-5 (2), not for MAE (0.7);
    # -0.0 >= 0 is positive (Has0); a label -0.6 with pred 0.0: wrong for Has0 (0 counts positive);
    # 2.5 rounds to 2 and -0.5 to -0, -2.5 to -2 (half to even); 1.4 vs 1.5: round 1 vs 2;
    # labels 0.0 drop out of Non0, where pred 0.0 counts negative (> 0).
    preds = [3.7, -0.0, 0.0, 2.5, -0.5, -2.5, 1.4, -3.2]
    labels = [3.0, 0.0, -0.6, 2.0, 0.5, -3.0, 1.5, 0.0]
    m = regression.mosei(preds, labels)
    assert m["Has0_acc_2"] == 0.625  # 5 of 8
    assert m["Has0_F1_score"] == 0.6455  # (6 * 8/11 + 2 * 0.4) / 8
    assert m["Non0_acc_2"] == 0.8333  # 5 of the 6 non-zero labels
    assert m["Non0_F1_score"] == 0.8381  # (4 * 6/7 + 2 * 0.8) / 6
    assert m["Mult_acc_7"] == 0.5
    assert m["Mult_acc_5"] == 0.625
    assert m["MAE"] == 0.825  # (0.7 + 0 + 0.6 + 0.5 + 1.0 + 0.5 + 0.1 + 3.2) / 8, unclipped
    assert m["Corr"] == round(float(np.corrcoef(preds, labels)[0, 1]), 4)


def test_sims_bin_edges_by_hand():
    # Right-closed bins: a value on an edge falls in the lower bin (0.1 neutral, -0.1 and -0.7 in
    # the lower class, 0 negative for Acc-2); 1.5 is clipped to 1 before everything, MAE included.
    preds = [0.1, -0.1, 0.0, 1.5, -0.7, 0.7, 0.4, -0.4]
    labels = [0.04, -0.1, 0.0, 1.0, -0.8, 0.6, -0.4, 0.4]
    m = regression.sims(preds, labels)
    assert m["Mult_acc_2"] == 0.75  # 0 falls in [-1, 0]: negative
    assert m["Mult_acc_3"] == 0.75
    assert m["Mult_acc_5"] == 0.75
    assert m["F1_score"] == 0.75
    assert m["MAE"] == 0.2325  # on clipped values: (0.06 + 0.1 + 0.1 + 0.8 + 0.8) / 8
    assert set(m) == {"Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}
    v2 = regression.sims(preds, labels, v2_additions=True)
    assert v2["Mult_acc_2_weak"] == 0.6  # labels within [-0.4, 0.4], both ends included: 3 of 5
    assert v2["R_squre"] == round(r2_score(np.float32(labels).clip(-1, 1), np.float32(preds).clip(-1, 1)), 4)


def test_values_are_compared_in_float32():
    # 0.10000000149 (float64) is float32's 0.1, and the edges are compared in float32 as the
    # references' tensors are: it is neutral (on the edge), where float64 would call it positive.
    near = float(np.float32(0.1))
    assert near > 0.1
    assert regression.sims([near], [0.05])["Mult_acc_3"] == 1.0
    assert np.digitize([near], [-0.1, 0.1], right=True)[0] == 2  # float64: the positive bin
    # float32 sums: the MAE of 0.1-steps is float32 arithmetic, as in MMSA
    preds, labels = [0.1] * 7, [0.0] * 7
    assert regression.mosei(preds, labels)["MAE"] == round(float(np.mean(np.float32(preds) - np.float32(labels))), 4)


def test_emotion_unparseable_and_out_of_range_by_hand():
    lines = [
        {"pred": p, "label": g}
        for p, g in zip(
            ["neutral", "surprise", None, "sadness", 9, "disgust", "anger", "joy"],
            ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger", "neutral"],
        )
    ]
    m = score.score("meld", lines)
    assert m["acc"] == 0.625  # the null answer counts as class 0 (neutral): wrong for 'fear'
    assert m["weight_F1"] == 0.625  # (2 * 0.5 + 1 + 0 + 1 + 0 + 1 + 1) / 8; class 9 has no support
    assert m["unparseable"] == 1.0


def test_non0_without_non_zero_labels_is_nan_not_an_error():
    m = regression.mosei([0.5, -0.5], [0.0, 0.0])
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == 0.5 and math.isnan(m["Corr"])  # constant labels: no correlation


# --------------------------------------------------------------------------- the reference, transcribed


def _mmsa_multiclass_acc(y_pred, y_true):
    return np.sum(np.round(y_pred) == np.round(y_true)) / float(len(y_true))


def mmsa_mosei(y_pred, y_true):
    """thuiar/MMSA src/MMSA/utils/metricsTop.py __eval_mosei_regression, verbatim but for names."""
    test_preds = y_pred.view(-1).cpu().detach().numpy()
    test_truth = y_true.view(-1).cpu().detach().numpy()
    test_preds_a7 = np.clip(test_preds, a_min=-3.0, a_max=3.0)
    test_truth_a7 = np.clip(test_truth, a_min=-3.0, a_max=3.0)
    test_preds_a5 = np.clip(test_preds, a_min=-2.0, a_max=2.0)
    test_truth_a5 = np.clip(test_truth, a_min=-2.0, a_max=2.0)
    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = np.corrcoef(test_preds, test_truth)[0][1]
    mult_a7 = _mmsa_multiclass_acc(test_preds_a7, test_truth_a7)
    mult_a5 = _mmsa_multiclass_acc(test_preds_a5, test_truth_a5)
    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0])
    non_zeros_binary_truth = test_truth[non_zeros] > 0
    non_zeros_binary_preds = test_preds[non_zeros] > 0
    non_zeros_acc2 = accuracy_score(non_zeros_binary_preds, non_zeros_binary_truth)
    non_zeros_f1_score = f1_score(non_zeros_binary_truth, non_zeros_binary_preds, average="weighted")
    binary_truth = test_truth >= 0
    binary_preds = test_preds >= 0
    acc2 = accuracy_score(binary_preds, binary_truth)
    f_score = f1_score(binary_truth, binary_preds, average="weighted")
    return {
        "Has0_acc_2": round(acc2, 4),
        "Has0_F1_score": round(f_score, 4),
        "Non0_acc_2": round(non_zeros_acc2, 4),
        "Non0_F1_score": round(non_zeros_f1_score, 4),
        "Mult_acc_5": round(mult_a5, 4),
        "Mult_acc_7": round(mult_a7, 4),
        "MAE": round(mae, 4),
        "Corr": round(corr, 4),
    }


def mse_adapter_sims(y_pred, y_true):
    """AZYoung233/MSE-Adapter utils/metricsTop.py __eval_sims_regression (SIMS-V2), verbatim but for names."""
    test_preds = y_pred.view(-1).cpu().detach().numpy()
    test_truth = y_true.view(-1).cpu().detach().numpy()
    test_preds = np.clip(test_preds, a_min=-1.0, a_max=1.0)
    test_truth = np.clip(test_truth, a_min=-1.0, a_max=1.0)
    ms_2 = [-1.01, 0.0, 1.01]
    weak_index_l = np.where(test_truth >= -0.4)[0]
    weak_index_r = np.where(test_truth <= 0.4)[0]
    weak_index = [x for x in weak_index_l if x in weak_index_r]
    test_preds_weak = test_preds[weak_index]
    test_truth_weak = test_truth[weak_index]
    test_preds_a2_weak = test_preds_weak.copy()
    test_truth_a2_weak = test_truth_weak.copy()
    for i in range(2):
        test_preds_a2_weak[np.logical_and(test_preds_weak > ms_2[i], test_preds_weak <= ms_2[i + 1])] = i
    for i in range(2):
        test_truth_a2_weak[np.logical_and(test_truth_weak > ms_2[i], test_truth_weak <= ms_2[i + 1])] = i
    out = {}
    for name, ms in (
        ("Mult_acc_2", [-1.01, 0.0, 1.01]),
        ("Mult_acc_3", [-1.01, -0.1, 0.1, 1.01]),
        ("Mult_acc_5", [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]),
    ):
        p, t = test_preds.copy(), test_truth.copy()
        for i in range(len(ms) - 1):
            p[np.logical_and(test_preds > ms[i], test_preds <= ms[i + 1])] = i
        for i in range(len(ms) - 1):
            t[np.logical_and(test_truth > ms[i], test_truth <= ms[i + 1])] = i
        out[name] = _mmsa_multiclass_acc(p, t)
        if name == "Mult_acc_2":
            out["F1_score"] = f1_score(t, p, average="weighted")
    out["Mult_acc_2_weak"] = _mmsa_multiclass_acc(test_preds_a2_weak, test_truth_a2_weak)
    out["MAE"] = np.mean(np.absolute(test_preds - test_truth))
    out["Corr"] = np.corrcoef(test_preds, test_truth)[0][1]
    out["R_squre"] = r2_score(test_truth, test_preds)
    return out


def _random_vectors(rng, n, scale):
    """Scores on the one-decimal grid (ties at every bin edge and rounding point), zeros, negative
    zeros and out-of-range predictions, as float32 tensors like the references hold them."""
    labels = np.round(rng.uniform(-scale, scale, n), 1)
    labels[rng.random(n) < 0.15] = 0.0
    preds = np.round(rng.uniform(-1.3 * scale, 1.3 * scale, n), 1)
    preds[rng.random(n) < 0.1] = -0.0
    preds[rng.random(n) < 0.1] = 0.0
    return preds, labels


@pytest.mark.parametrize("seed", range(5))
def test_mosei_equals_mmsa_on_random_vectors(seed):
    preds, labels = _random_vectors(np.random.default_rng(seed), 200, 3.0)
    ours = regression.mosei(preds.tolist(), labels.tolist())
    theirs = mmsa_mosei(torch.Tensor(preds), torch.Tensor(labels))
    assert ours == pytest.approx(theirs, abs=0, rel=0), (ours, theirs)  # identical after MMSA's rounding


@pytest.mark.parametrize("seed", range(5))
def test_simsv2_equals_mse_adapter_on_random_vectors(seed):
    preds, labels = _random_vectors(np.random.default_rng(seed), 200, 1.0)
    ours = regression.sims(preds, labels, v2_additions=True)
    theirs = mse_adapter_sims(torch.Tensor(preds), torch.Tensor(labels))
    assert set(ours) == set(theirs)
    for key in theirs:  # the same numbers to 4 decimals (MSE-Adapter's copy does not round)
        assert ours[key] == round(float(theirs[key]), 4), key


def test_score_command_reads_regression_lines(tmp_path, capsys):
    from sentiray.cli import main

    preds, labels = _random_vectors(np.random.default_rng(9), 50, 3.0)
    path = tmp_path / "predictions.jsonl"
    lines = [{"id": str(i), "pred": float(p), "label": float(g)} for i, (p, g) in enumerate(zip(preds, labels))]
    lines[3]["pred"] = None  # an unparseable answer: counts as 0, and is counted
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["score", "--task", "mosi", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    preds[3] = 0.0
    assert {k: v for k, v in got.items() if k != "unparseable"} == mmsa_mosei(torch.Tensor(preds), torch.Tensor(labels))
    assert got["unparseable"] == 1.0
    for task in ("mosei", "sims", "simsv2"):
        assert main(["score", "--task", task, str(path)]) == 0
