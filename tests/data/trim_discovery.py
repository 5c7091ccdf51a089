#!/usr/bin/env python3
"""Cuts the Compute Engine v1 discovery document down to what nodewire and its simulator use.

The full document ships in the google-api-python-client wheel on PyPI
(googleapiclient/discovery_cache/documents/compute.v1.json, about 5 MB). This keeps the methods
nodewire calls or the simulator serves, and the closure of the schemas they reference, without
descriptions, and records where it came from. Regenerate with:

    pip download --no-deps google-api-python-client==2.202.0 -d /tmp/gapi
    python3 tests/data/trim_discovery.py /tmp/gapi/google_api_python_client-2.202.0-py3-none-any.whl \
        > tests/data/compute.v1.subset.json
"""
import hashlib
import json
import sys
import zipfile

METHODS = {
    "instances": ["get", "list", "aggregatedList", "insert", "delete", "setTags", "setMetadata",
                  "setLabels", "updateNetworkInterface"],
    "zoneOperations": ["get", "list", "wait"],
    "subnetworks": ["get", "list", "aggregatedList"],
}


def refs(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                out.add(v)
            else:
                refs(v, out)
    elif isinstance(node, list):
        for v in node:
            refs(v, out)


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in ("description", "enumDescriptions")}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(wheel):
    raw = zipfile.ZipFile(wheel).read("googleapiclient/discovery_cache/documents/compute.v1.json")
    doc = json.loads(raw)
    methods = {}
    wanted = set()
    for res, names in METHODS.items():
        for name in names:
            m = doc["resources"][res]["methods"][name]
            methods[f"{res}.{name}"] = {
                "httpMethod": m["httpMethod"],
                "path": m["path"],
                "request": m.get("request", {}).get("$ref"),
                "response": m.get("response", {}).get("$ref"),
            }
            for k in ("request", "response"):
                if m.get(k, {}).get("$ref"):
                    wanted.add(m[k]["$ref"])
    schemas = {}
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in schemas:
            continue
        schemas[name] = strip(doc["schemas"][name])
        found = set()
        refs(doc["schemas"][name], found)
        todo.extend(found - set(schemas))
    out = {
        "_provenance": {
            "source": "googleapiclient/discovery_cache/documents/compute.v1.json in " + wheel.rsplit("/", 1)[-1],
            "sha256": hashlib.sha256(raw).hexdigest(),
            "revision": doc.get("revision"),
            "trimmed_by": "tests/data/trim_discovery.py (methods nodewire uses, their schema closure, no descriptions)",
        },
        "methods": methods,
        "schemas": dict(sorted(schemas.items())),
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
