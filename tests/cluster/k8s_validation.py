"""Offline validation of Kubernetes manifests, as strict as `kubectl apply` would be.

* KubeRay kinds (RayCluster, RayJob, RayService): the ``openAPIV3Schema`` of the CRDs that
  KubeRay installs (../shared/kuberay-crds), turned into JSON Schema for ``jsonschema``:
  unknown fields are errors (kubectl's strict field validation; the API server would
  otherwise prune them silently, which is how a typo vanishes), ``nullable``,
  ``x-kubernetes-int-or-string``, ``x-kubernetes-list-type`` (set / map keys unique) and the
  int32/int64 ranges are honoured. CEL rules (``x-kubernetes-validations``) cannot be
  evaluated here: a manifest that sets a field carrying them is reported, not passed.
* Core kinds: Kubernetes' own schemas from the kubernetes-validate package, strict mode.
* Inside KubeRay kinds, every pod template and every object's metadata are also checked
  against the core PodTemplateSpec and ObjectMeta schemas, which the CRDs copy loosely.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = Path(os.environ.get("SENTIRAY_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay-crds"))
# The oldest Kubernetes that KubeRay 1.7 supports and the newest that kubernetes-validate knows.
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
# Names, as the API server checks them (the JSON schemas do not): most objects need a DNS-1123
# subdomain; Services, and the KubeRay kinds whose names become Service names, a DNS-1035 label.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAMED = ("Service", "RayCluster", "RayJob", "RayService")

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


# --------------------------------------------------------------------------- CRD schema -> JSON Schema


def _strict(schema: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema with Kubernetes' semantics."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and not out.get("x-kubernetes-embedded-resource")
    ):
        out["additionalProperties"] = False
    return out


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
        if len(set(seen)) != len(seen):
            yield jsonschema.ValidationError("duplicate items in a list of type set")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = set()
        for item in instance:
            key = tuple(json.dumps(item.get(k)) for k in keys) if isinstance(item, dict) else (json.dumps(item),)
            if key in seen:
                yield jsonschema.ValidationError(f"two items with the same {'/'.join(keys)}: {key}")
            seen.add(key)


def _cel_rules(validator, rules, instance, schema):
    yield jsonschema.ValidationError(
        f"this field carries CEL rules that cannot be checked offline: {[r.get('rule') for r in rules]}"
    )


def _format(validator, fmt, instance, schema):
    if fmt in _INT_RANGES and validator.is_type(instance, "integer"):
        low, high = _INT_RANGES[fmt]
        if not low <= instance <= high:
            yield jsonschema.ValidationError(f"{instance} is out of the {fmt} range")


_CrdValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel_rules, "format": _format},
)


def load_crd_validators(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str], Any]:
    """``(apiVersion, kind) -> validator`` for every version the CRDs serve."""
    validators = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        # The C loader when PyYAML has it: the three CRDs are 3 MB of YAML.
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = _CrdValidator(schema)
    return validators


# --------------------------------------------------------------------------- validating documents


def _format_error(err: jsonschema.ValidationError) -> str:
    return f"{'.'.join(str(p) for p in err.absolute_path) or '(top)'}: {err.message[:300]}"


def _core_errors(doc: dict[str, Any], what: str) -> list[str]:
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{what} (Kubernetes {version}): {_format_error(err)}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{what}: {err.message}")
    return errors


def pod_templates(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template (a mapping whose spec has containers) inside a document."""
    if isinstance(node, dict):
        spec = node.get("spec")
        if (
            isinstance(spec, dict)
            and isinstance(spec.get("containers"), list)
            and path.endswith(("template", "Template"))
        ):
            yield path, node
        for key, value in node.items():
            yield from pod_templates(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pod_templates(value, f"{path}[{i}]")


def validate_document(doc: dict[str, Any], crd_validators: dict[tuple[str, str], Any]) -> list[str]:
    """Every problem with one manifest, as readable lines; empty when it is valid."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (apiVersion and kind needed)"]
    key = (doc["apiVersion"], doc["kind"])
    raw_name = str((doc.get("metadata") or {}).get("name"))
    name = f"{doc['kind']}/{raw_name}"
    errors = []
    if doc["kind"] in _LABEL_NAMED and not (_LABEL_1035.match(raw_name) and len(raw_name) <= 63):
        errors.append(f"{name}: metadata.name must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter, <= 63)")
    elif not (_SUBDOMAIN.match(raw_name) and len(raw_name) <= 253):
        errors.append(f"{name}: metadata.name must be a DNS-1123 subdomain")
    if key not in crd_validators:
        return errors + _core_errors(doc, name)
    errors += [f"{name}: {_format_error(e)}" for e in crd_validators[key].iter_errors(doc)]
    # The CRDs leave metadata and the pod templates' metadata as free objects: check them as core objects do.
    errors += _core_errors(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata") or {}}, f"{name} metadata"
    )
    for path, template in pod_templates(doc.get("spec")):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        errors += _core_errors(wrapped, f"{name} spec.{path}")
    return errors


def validate_text(text: str, crd_validators: dict[tuple[str, str], Any]) -> list[str]:
    errors = []
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs:
        return ["no Kubernetes objects"]
    for doc in docs:
        errors += validate_document(doc, crd_validators)
    return errors
