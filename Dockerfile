# syntax=docker/dockerfile:1
# The image every sentiray Ray pod runs (k8s/raycluster.yaml): Ray's own image at the Ray
# version constraints.txt pins, with sentiray installed from this checkout under the same
# constraints, and the project's configs (jobs/, serve/, tune/) in /home/ray/sentiray, the
# working directory of the RayJobs that `sentiray k8s render` writes.
#
#   CPU (head, CPU workers):
#     docker build -t REGISTRY/sentiray:0.1.0-ray2.60.0-py311-cpu .
#   CUDA (GPU workers): Ray's GPU image, PyPI's CUDA build of torch, the `gpu` extra:
#     docker build -t REGISTRY/sentiray:0.1.0-ray2.60.0-py311-gpu \
#       --build-arg RAY_VARIANT=-gpu --build-arg TORCH_INDEX= --build-arg EXTRAS=gpu .
#   MLflow tracking server (k8s/mlflow.yaml):
#     docker build --target mlflow -t REGISTRY/sentiray-mlflow:3.17.2 .

ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
# "" = Ray's CPU image, "-gpu" = its CUDA image.
ARG RAY_VARIANT=

# --------------------------------------------------------------------------- MLflow server
# Only MLflow and the drivers its server needs: Postgres (backend store), boto3 (S3 artifacts).
FROM python:3.11-slim AS mlflow
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt mlflow==3.17.2 boto3 psycopg2-binary==2.9.13 \
    && rm /tmp/constraints.txt
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# --------------------------------------------------------------------------- sentiray on Ray
# Last stage: the default target.
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}${RAY_VARIANT} AS sentiray
ARG RAY_VERSION
# CPU builds take torch from PyTorch's CPU index (the pinned version, without 2.5 GB of CUDA
# libraries); an empty TORCH_INDEX takes PyPI's CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Optional extras, e.g. "gpu" (torchvision, qwen-vl-utils, accelerate) for Qwen2.5-VL.
ARG EXTRAS=

# Install from a throwaway copy of the source: the package lands in site-packages and the
# working directory holds configs only, so a RayJob uploads kilobytes, not the source tree.
COPY --chown=ray:users pyproject.toml README.md constraints.txt /tmp/sentiray-src/
COPY --chown=ray:users platform /tmp/sentiray-src/platform
RUN cd /tmp/sentiray-src \
    && pip install --no-cache-dir -c constraints.txt \
         ${TORCH_INDEX:+--extra-index-url ${TORCH_INDEX}} \
         ".${EXTRAS:+[${EXTRAS}]}" \
    && python -c "import ray, sentiray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
    && cd / && rm -rf /tmp/sentiray-src

# The configs, in a layer of their own: editing a YAML does not redo the install above.
# (serve/ and tune/ may be absent from a checkout: git keeps no empty folders.)
COPY --chown=ray:users . /tmp/sentiray-context/
RUN mkdir -p /home/ray/sentiray \
    && for d in jobs serve tune; do \
         if [ -d /tmp/sentiray-context/$d ]; then cp -r /tmp/sentiray-context/$d /home/ray/sentiray/; fi; \
       done \
    && rm -rf /tmp/sentiray-context
WORKDIR /home/ray/sentiray
