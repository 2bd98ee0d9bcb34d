"""Registering a model in a real MLflow store and loading it back by models:/ URI."""

import base64

import mlflow
import pandas as pd

from sentiray import tracking
from sentiray.data import synthetic
from sentiray.models import registry
from sentiray.models.loading import load_model


def test_log_register_resolve_and_predict(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.setup()
    with mlflow.start_run():
        info = registry.log_model(tiny_models["vlm"], registered_name="tiny-student")
    assert info.registered_model_version == 1
    folder = registry.resolve_model_uri("models:/tiny-student/1")
    model, _ = load_model(folder, kind="vlm")
    original, _ = load_model(tiny_models["vlm"], kind="vlm")
    for (n1, p1), (_, p2) in zip(model.state_dict().items(), original.state_dict().items()):
        assert (p1 == p2).all(), n1
    rows = synthetic.generate("msc", 10, seed=1).splits["train"][:3]
    df = pd.DataFrame(
        [{"text": r["text"], "image": base64.b64encode(r["image"]).decode(), "task": "msc"} for r in rows]
    )
    pred = mlflow.pyfunc.load_model("models:/tiny-student/1").predict(df)
    assert list(pred.columns) == ["label", "prob_positive", "prob_neutral", "prob_negative"]
    assert len(pred) == 3
    assert ((pred[["prob_positive", "prob_neutral", "prob_negative"]].sum(axis=1) - 1).abs() < 1e-5).all()
