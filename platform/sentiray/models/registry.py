"""Models in MLflow: log a trained HF folder as a pyfunc model, register it, find it again.

A registered sentiray model is an MLflow pyfunc whose artifact ``model`` is the exported
folder itself (with its ``sentiray.json`` manifest naming the family), so it can be loaded
either way: ``mlflow.pyfunc.load_model("models:/student/1").predict(df)`` (the family's
predictor, the same code as evaluation and serving) or, for serving and further training,
:func:`resolve_model_uri` -> local folder -> :func:`sentiray.families.load_predictor`.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from sentiray.data import storage

MODEL_ARTIFACT = "model"  # the exported folder, whatever its family
_ARTIFACT_NAMES = (MODEL_ARTIFACT, "hf")  # "hf": models registered before families existed


def frame_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataFrame records -> canonical rows: images given as base64 (or data URLs) -> bytes,
    NaN (a column some rows leave empty) -> None."""
    rows = []
    for record in records:
        row = {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}
        image = row.get("image")
        if isinstance(image, str):
            row["image"] = base64.b64decode(image.split(",", 1)[-1]) if image else None
        rows.append(row)
    return rows


def flatten_prediction(pred: dict[str, Any]) -> dict[str, Any]:
    """One DataFrame row: ``{"probs": {"positive": .7}}`` -> ``prob_positive``; other dicts
    ``a.b`` -> ``a_b``."""
    out: dict[str, Any] = {}
    for key, value in pred.items():
        if isinstance(value, dict):
            prefix = "prob" if key == "probs" else key
            out.update({f"{prefix}_{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _pyfunc_class():
    import mlflow.pyfunc

    class _FamilyPyfunc(mlflow.pyfunc.PythonModel):
        """Any family's model: ``predict(df)`` -> one row per input row, the family's fields."""

        def load_context(self, context):
            from sentiray import families

            self.predictor = families.load_predictor(context.artifacts[MODEL_ARTIFACT])

        def predict(self, context, model_input, params=None):
            import pandas as pd

            rows = frame_rows(model_input.to_dict(orient="records"))
            preds = []
            size = self.predictor.batch_size
            for start in range(0, len(rows), size):
                preds += self.predictor.predict(rows[start : start + size], dict(params or {}))
            return pd.DataFrame([flatten_prediction(p) for p in preds])

    return _FamilyPyfunc


def log_model(folder: str, name: str = "model", registered_name: str | None = None) -> Any:
    """Log the exported model at ``folder`` (local or s3://) to the active run as a pyfunc;
    optionally register it. The folder's manifest says which family predicts with it."""
    import mlflow

    from sentiray import __version__, families

    local = storage.local_copy(folder) if storage.is_remote(folder) else folder
    manifest = families.read_manifest(local)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=_pyfunc_class()(),
        artifacts={MODEL_ARTIFACT: local},
        model_config={"family": manifest.get("family"), "task": manifest.get("task")},
        registered_model_name=registered_name,
        # Explicit requirements: inferring them would load and run the model in a subprocess.
        pip_requirements=[f"sentiray=={__version__}"],
    )


def _find_model_folder(root: str) -> str:
    """The exported model inside a downloaded artifact tree: a folder with a sentiray
    manifest, else the first Hugging Face folder."""
    from sentiray.families import MANIFEST

    found = None
    for current, _, files in sorted(os.walk(root)):
        if MANIFEST in files:
            return current
        if found is None and ("config.json" in files or "adapter_config.json" in files):
            found = current
    if found is None:
        raise FileNotFoundError(f"no model (sentiray.json or config.json) under {root}")
    return found


def resolve_model_uri(uri: str) -> str:
    """A local HF folder for ``models:/name/version``, ``models:/name@alias``, ``runs:/...``,
    an s3:// prefix or a local path."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow

        from sentiray import tracking

        if mlflow.get_tracking_uri() != tracking.tracking_uri():
            tracking.setup()
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        for name in _ARTIFACT_NAMES:
            inside = os.path.join(local, "artifacts", name)
            if os.path.isdir(inside):
                return _find_model_folder(inside)
        return _find_model_folder(local)
    if storage.is_remote(uri):
        return storage.local_copy(uri)
    return storage.filesystem(uri)[1]
