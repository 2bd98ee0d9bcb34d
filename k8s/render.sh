#!/usr/bin/env bash
# Render the generated manifests of k8s/ from their sources: one RayJob per pipeline stage
# (from jobs/*.yaml) and the RayService (from serve/student.yaml), all on the cluster spec of
# k8s/raycluster.yaml. Run it from anywhere after changing any of those, or to point the
# jobs at your bucket and checkpoints:
#
#   SENTIRAY_STORAGE_ROOT=s3://my-bucket/sentiray SENTIRAY_MODELS=s3://my-bucket/models k8s/render.sh
#
# The overrides below are the papers' settings for a GPU cluster (Qwen2.5-VL 7B assistant,
# 3B student, 72B teacher, LoRA r=16, bfloat16); each is checked against the job's schema
# while rendering, and each manifest records the command that made it.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=${SENTIRAY_STORAGE_ROOT:-s3://sentiray-artifacts/runs}
MODELS=${SENTIRAY_MODELS:-s3://sentiray-artifacts/models}

render() {  # render OUTPUT SOURCE [overrides and options]
    local out=$1
    shift
    sentiray k8s render "$@" -o "k8s/$out"
}

render rayjob-data.yaml jobs/data.yaml storage.root="$ROOT" data.size=20000
render rayjob-rationales.yaml jobs/rationales.yaml storage.root="$ROOT" data.input=data/msc data.output=data/rationales \
    teacher.name=Qwen2.5-VL-72B-Instruct teacher.model.path="$MODELS/Qwen2.5-VL-72B-Instruct" \
    teacher.model.dtype=bfloat16 teacher.num_gpus=4 teacher.concurrency=2 teacher.max_new_tokens=512
render rayjob-assistant.yaml jobs/assistant.yaml storage.root="$ROOT" \
    model.path="$MODELS/Qwen2.5-VL-7B-Instruct" model.dtype=bfloat16 model.lora.enabled=true \
    train.precision=bf16 train.use_gpu=true train.num_workers=4 train.cpus_per_worker=4 \
    train.lr=3.0e-4 train.batch_size=2 train.grad_accum=20 train.epochs=20
render rayjob-augment.yaml jobs/augment.yaml storage.root="$ROOT" model.dtype=bfloat16 \
    --entrypoint-num-gpus 1
render rayjob-student.yaml jobs/student.yaml storage.root="$ROOT" \
    model.path="$MODELS/Qwen2.5-VL-3B-Instruct" model.dtype=bfloat16 model.lora.enabled=true \
    train.precision=bf16 train.use_gpu=true train.num_workers=4 train.cpus_per_worker=4 train.lr=3.0e-4
render rayjob-evaluate.yaml jobs/evaluate.yaml storage.root="$ROOT" model.dtype=bfloat16 \
    --entrypoint-num-gpus 1
# The whole chain as one RayJob (`sentiray pipeline`): same settings, each for its stage
# (`stage:key=value`). Its driver holds one GPU for the evaluate stage's in-process generation.
render rayjob-pipeline.yaml jobs/pipeline.yaml storage.root="$ROOT" data:data.size=20000 \
    rationales:teacher.name=Qwen2.5-VL-72B-Instruct rationales:teacher.model.path="$MODELS/Qwen2.5-VL-72B-Instruct" \
    rationales:teacher.model.dtype=bfloat16 rationales:teacher.num_gpus=4 rationales:teacher.concurrency=2 \
    rationales:teacher.max_new_tokens=512 \
    assistant:model.path="$MODELS/Qwen2.5-VL-7B-Instruct" assistant:model.dtype=bfloat16 assistant:model.lora.enabled=true \
    assistant:train.precision=bf16 assistant:train.use_gpu=true assistant:train.num_workers=4 \
    assistant:train.cpus_per_worker=4 assistant:train.lr=3.0e-4 assistant:train.batch_size=2 \
    assistant:train.grad_accum=20 assistant:train.epochs=20 \
    augment:model.dtype=bfloat16 \
    student:model.path="$MODELS/Qwen2.5-VL-3B-Instruct" student:model.dtype=bfloat16 student:model.lora.enabled=true \
    student:train.precision=bf16 student:train.use_gpu=true student:train.num_workers=4 \
    student:train.cpus_per_worker=4 student:train.lr=3.0e-4 \
    evaluate:model.dtype=bfloat16 \
    --name sentiray-pipeline --entrypoint-num-gpus 1
render rayservice.yaml serve/student-cluster.yaml --name sentiray-student
