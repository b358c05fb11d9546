#!/usr/bin/env python3
"""Turn one version of a CustomResourceDefinition into the JSON Schema that
deploy/check-manifests validates custom resources against.

    python3 crd-to-schema.py CRD.yaml VERSION SOURCE > KIND-GROUP-VERSION.json

SOURCE is a free-text note (repository, path, commit) stored in the schema's
$comment. Needs PyYAML. What it does to the CRD's openAPIV3Schema, so that a
manifest passes here when the API server would accept it:

- drops descriptions and list/map type hints (reduced); keeps `default`,
  which deploy/check-manifests fills in before validating, as the API server
  does;
- `nullable: true` adds "null" to the type; `x-kubernetes-int-or-string`
  becomes integer-or-string;
- an object (`type: object`) with `properties` and no `additionalProperties` or
  `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`:
  kubectl's default field validation (strict) refuses unknown fields;
- `metadata` becomes a reduced ObjectMeta; `status` any object;
- apiVersion and kind become constants and are required;
- an `anyOf` constraint listed in ANYOF_MESSAGES gets that `x-message`;
- CEL rules (`x-kubernetes-validations`) that have a JSON Schema equivalent in
  TRANSLATED are translated, with their message in `x-message`; the others are
  listed in the top-level `x-not-enforced` and not checked.
"""

import json
import re
import sys

import yaml

DROP = {
    "description",
    "example",
    "externalDocs",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
}

OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "managedFields": {"type": "array", "items": {"type": "object"}},
    },
}


def _not_ci(word):
    """A pattern matching anything but WORD, ignoring ASCII case."""
    letters = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)
    return {"type": "string", "pattern": f"^(?!{letters}$)"}


def translate(rule):
    """The JSON Schema equivalent of one CEL rule, or None."""
    rule = " ".join(rule.split())
    fixed = {
        # Route spec.tls
        "has(self.termination) && has(self.insecureEdgeTerminationPolicy) ? "
        "!((self.termination=='passthrough') && (self.insecureEdgeTerminationPolicy=='Allow')) : true": {
            "not": {
                "required": ["termination", "insecureEdgeTerminationPolicy"],
                "properties": {
                    "termination": {"const": "passthrough"},
                    "insecureEdgeTerminationPolicy": {"const": "Allow"},
                },
            }
        },
        "!(has(self.certificate) && has(self.externalCertificate))": {
            "not": {"required": ["certificate", "externalCertificate"]}
        },
        # Route spec
        "!has(self.tls) || self.tls.termination != 'passthrough' || !has(self.httpHeaders)": {
            "not": {
                "required": ["tls", "httpHeaders"],
                "properties": {"tls": {"required": ["termination"], "properties": {"termination": {"const": "passthrough"}}}},
            }
        },
        # Route header actions
        "has(self.type) && self.type == 'Set' ? has(self.set) : !has(self.set)": {
            "if": {"required": ["type"], "properties": {"type": {"const": "Set"}}},
            "then": {"required": ["set"]},
            "else": {"not": {"required": ["set"]}},
        },
    }
    if rule in fixed:
        return fixed[rule]
    m = re.fullmatch(r"self\.lowerAscii\(\) != '([^']+)'", rule)
    if m:
        return _not_ci(m.group(1))
    return None


# Constraints that the upstream CRD states as anyOf (openshift/api's manual
# overrides of the generated Route CRD), with no message of their own: a
# message to print when one fails, found by a fragment of the constraint.
ANYOF_MESSAGES = [
    ('"path": {"maxLength": 0}', "path is not allowed when tls.termination is passthrough"),
    ('"wildcardPolicy": {"enum": ["Subdomain"]}', "wildcardPolicy Subdomain needs a host"),
    ('"key": {"maxLength": 0}', "passthrough termination takes no certificate, key, caCertificate or destinationCACertificate"),
    ('"termination": {"enum": ["edge"]}', "edge termination takes no destinationCACertificate"),
]


def convert(node, path, skipped):
    if isinstance(node, list):
        return [convert(n, path, skipped) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in DROP or value is None:
            continue
        if key == "properties":
            out[key] = {name: convert(sub, f"{path}.{name}", skipped) for name, sub in value.items()}
        elif key == "items":
            out[key] = convert(value, f"{path}[]", skipped)
        elif key in ("x-kubernetes-validations", "nullable", "x-kubernetes-int-or-string",
                     "x-kubernetes-preserve-unknown-fields"):
            continue
        else:
            out[key] = convert(value, path, skipped)

    if "anyOf" in out:
        text = json.dumps(out["anyOf"], sort_keys=True)
        for fragment, message in ANYOF_MESSAGES:
            if fragment in text:
                out["x-message"] = f"{path or '.'}: {message}"
                break
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    for rule in node.get("x-kubernetes-validations", []):
        equivalent = translate(rule["rule"])
        if equivalent is None:
            skipped.append({"path": path or ".", "rule": " ".join(rule["rule"].split()), "message": rule.get("message")})
        else:
            equivalent["x-message"] = f"{path or '.'}: {rule.get('message', rule['rule'])}"
            out.setdefault("allOf", []).append(equivalent)
    return out


def main():
    crd_file, version, source = sys.argv[1:4]
    with open(crd_file) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition")
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    ver = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    skipped = []
    schema = convert(ver["schema"]["openAPIV3Schema"], "", skipped)
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"]["metadata"] = OBJECT_META
    if "status" in schema["properties"]:
        schema["properties"]["status"] = {"type": "object"}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    result = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{kind} {group}/{version}",
        "$comment": f"Generated by deploy/schemas/crd-to-schema.py from {source}. Do not edit by hand.",
        "x-not-enforced": skipped,
        **schema,
    }
    json.dump(result, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
