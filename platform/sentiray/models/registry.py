"""Models in MLflow: log a trained HF folder as a pyfunc model, register it, find it again.

A registered sentiray model is an MLflow pyfunc whose artifact ``hf`` is the Hugging Face
folder itself, so it can be loaded either way:
``mlflow.pyfunc.load_model("models:/student/1").predict(df)`` or, for serving and further
training, :func:`resolve_model_uri` -> local HF folder -> :func:`~sentiray.models.loading.load_model`.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from sentiray.data import storage

HF_ARTIFACT = "hf"


def _pyfunc_class():
    import mlflow.pyfunc

    class _SentimentPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from sentiray.models.generation import Generator
            from sentiray.models.loading import load_model, prepare_for_generation

            meta = context.model_config or {}
            self.kind = meta.get("kind", "vlm")
            self.labels = tuple(meta.get("labels", ("positive", "neutral", "negative")))
            model, processor = load_model(context.artifacts[HF_ARTIFACT], kind=self.kind, for_generation=True)
            prepare_for_generation(model, processor)
            self.generator = Generator(model, processor)

        def predict(self, context, model_input, params=None):
            import pandas as pd
            import torch

            from sentiray.data import images
            from sentiray import prompts

            rows = model_input.to_dict(orient="records")
            texts, imgs = [], []
            for row in rows:
                image = row.get("image")
                if isinstance(image, str) and image:
                    image = base64.b64decode(image.split(",", 1)[-1])
                row = {**row, "image": image or None, "task": row.get("task") or "msc"}
                texts.append(prompts.render("label", row))
                imgs.append(images.load(row))
            probs = torch.softmax(self.generator.label_logprobs(texts, imgs, self.labels), -1)
            out = {"label": [self.labels[int(i)] for i in probs.argmax(-1)]}
            for j, label in enumerate(self.labels):
                out[f"prob_{label}"] = probs[:, j].tolist()
            return pd.DataFrame(out)

    return _SentimentPyfunc


def log_model(
    folder: str,
    name: str = "model",
    kind: str = "vlm",
    labels: tuple[str, ...] = ("positive", "neutral", "negative"),
    registered_name: str | None = None,
) -> Any:
    """Log the HF model at ``folder`` (local or s3://) to the active run; optionally register it."""
    import mlflow

    from sentiray import __version__

    local = storage.local_copy(folder) if storage.is_remote(folder) else folder
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=_pyfunc_class()(),
        artifacts={HF_ARTIFACT: local},
        model_config={"kind": kind, "labels": list(labels)},
        registered_model_name=registered_name,
        # Explicit requirements: inferring them would load and run the model in a subprocess.
        pip_requirements=[f"sentiray=={__version__}"],
    )


def _find_hf_folder(root: str) -> str:
    for current, _, files in os.walk(root):
        if "config.json" in files or "adapter_config.json" in files:
            return current
    raise FileNotFoundError(f"no Hugging Face model (config.json) under {root}")


def resolve_model_uri(uri: str) -> str:
    """A local HF folder for ``models:/name/version``, ``models:/name@alias``, ``runs:/...``,
    an s3:// prefix or a local path."""
    if uri.startswith(("models:/", "runs:/")):
        import mlflow

        from sentiray import tracking

        if mlflow.get_tracking_uri() != tracking.tracking_uri():
            tracking.setup()
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        hf = os.path.join(local, "artifacts", HF_ARTIFACT)
        return _find_hf_folder(hf if os.path.isdir(hf) else local)
    if storage.is_remote(uri):
        return storage.local_copy(uri)
    return storage.filesystem(uri)[1]
