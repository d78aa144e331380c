#!/usr/bin/env python3
"""Strict schema validation of rendered manifests, offline.

Built-in kinds are checked with kubernetes-validate's strict schemas (unknown fields rejected).
kubernetes-validate knows nothing of CustomResourceDefinitions and only warns on a kind it has no
schema for; here such a kind is validated against the openAPIV3Schema of a CRD file given with
--crds (made strict the same way: an object schema that lists its properties rejects others,
unless it says x-kubernetes-preserve-unknown-fields), its metadata against Kubernetes' ObjectMeta,
and a kind that no schema covers is an error, not a warning.

    validate.py [--kubernetes-version 1.33] [--crds DIR]... rendered.yaml...

Prints one line per problem and exits 1 if there was any.
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import sys
from typing import Any, Dict, Iterable, List, Tuple

import jsonschema
import kubernetes_validate.utils as kv
import yaml
from referencing import Registry, Resource

OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with listed properties reject others."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crds(dirs: Iterable[str]) -> Dict[Tuple[str, str], dict]:
    """(apiVersion, kind) -> strict JSON schema, from every CRD in the given folders."""
    schemas: Dict[Tuple[str, str], dict] = {}
    for d in dirs:
        files = sorted(glob.glob(os.path.join(d, "*.yaml")) + glob.glob(os.path.join(d, "*.yml")))
        if not files:
            raise SystemExit(f"no CRD files in {d}")
        for f in files:
            with open(f) as fh:
                for doc in yaml.safe_load_all(fh):
                    if not doc or doc.get("kind") != "CustomResourceDefinition":
                        continue
                    spec = doc["spec"]
                    for v in spec["versions"]:
                        if not v.get("served", True):
                            continue
                        schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                        props = schema.setdefault("properties", {})
                        props["metadata"] = {"$ref": OBJECT_META}
                        props["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{v['name']}"]}
                        props["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
                        schema["additionalProperties"] = False
                        schemas[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = schema
    return schemas


def _definitions(version: str) -> dict:
    v = [x for x in kv.all_versions() if kv.major_minor(x) <= kv.major_minor(version)][-1]
    return kv.schema_contents(f"kubernetes-json-schema/v{v}-local-strict/_definitions.json", version)


def _name(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')}/{meta.get('name', '?')}"


def validate_docs(docs: List[dict], version: str, crds: Dict[Tuple[str, str], dict]) -> List[str]:
    errors: List[str] = []
    registry = Resource.from_contents(_definitions(version)) @ Registry()
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            errors.append(f"{_name(doc) if isinstance(doc, dict) else doc!r}: not a Kubernetes object")
            continue
        key = (doc["apiVersion"], doc["kind"])
        if key in crds:
            validator = jsonschema.Draft202012Validator(crds[key], registry=registry)
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{_name(doc)}: {path}: {e.message}")
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{_name(doc)}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"{_name(doc)}: no schema ({e.message}); add its CRD with --crds")
    return errors


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", "--kubernetes-version", default="1.33.0")
    ap.add_argument("--crds", action="append", default=[], help="folder of CRD YAML files")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    crds = load_crds(args.crds)
    failed = 0
    for f in args.files:
        with open(f) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d]
        errors = validate_docs(docs, args.kubernetes_version, crds)
        for e in errors:
            print(f"ERROR {f}: {e}")
        if errors:
            failed += 1
        else:
            print(f"ok {f}: {len(docs)} objects valid against Kubernetes {args.kubernetes_version} (strict)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
