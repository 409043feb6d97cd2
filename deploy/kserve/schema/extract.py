"""Make deploy/kserve/schema/kserve-crds.schema.json.gz: JSON Schemas of the KServe resources used in deploy/kserve,
taken from KServe's own CRDs (no registry package ships them: the `kserve` wheel has generated model classes,
npm has no KServe models), so tests/deploy/test_kserve.py can check the manifests offline.

From each CRD's served storage version it keeps openAPIV3Schema, drops descriptions (size), and closes every
object that lists its properties (additionalProperties: false, except where the CRD preserves unknown fields):
what `kubectl apply` does with its default --validate=strict (unknown fields are errors, not silently pruned).
`metadata` gets a small ObjectMeta schema (name, namespace, labels, annotations). CEL rules
(x-kubernetes-validations) and the admission webhooks' checks are not covered.

usage (from a KServe checkout):
  python deploy/kserve/schema/extract.py --source "kserve/kserve@<commit>" \
      config/crd/full/serving.kserve.io_inferenceservices.yaml \
      config/crd/full/serving.kserve.io_clusterservingruntimes.yaml
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).with_name("kserve-crds.schema.json.gz")
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def close(node: Any) -> Any:
    if isinstance(node, list):
        return [close(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: close(v) for k, v in node.items() if k != "description"}
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def resource_schema(crd: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    [version] = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    schema = close(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    namespaced = crd["spec"]["scope"] == "Namespaced"
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": DNS_LABEL},
            **({"namespace": {"type": "string", "pattern": DNS_LABEL}} if namespaced else {}),
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        },
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return f"{group}/{version['name']}/{kind}", schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="where the CRDs come from, e.g. kserve/kserve@<commit>")
    parser.add_argument("crds", nargs="+", type=Path)
    args = parser.parse_args()
    schemas = dict(resource_schema(yaml.safe_load(path.read_text())) for path in args.crds)
    document = {"source": args.source, "files": [p.name for p in args.crds], "license": "Apache-2.0 (KServe)",
                "schemas": schemas}
    # mtime=0: the same CRDs give the same bytes
    OUT.write_bytes(gzip.compress(json.dumps(document, sort_keys=True, separators=(",", ":")).encode(), mtime=0))
    print(f"{OUT}: {', '.join(schemas)}")


if __name__ == "__main__":
    main()
