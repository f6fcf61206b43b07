#!/usr/bin/env python3
"""Writes agentplane.wasm as an OCI image in a local OCI layout directory,
in the form Istio's Wasm image specification calls the OCI-spec compliant
one: the module is the single layer, with the Wasm media types.

  config  application/vnd.module.wasm.config.v1+json
  layer   application/vnd.module.wasm.content.layer.v1+wasm  (the .wasm itself)

usage: oci_layout.py <agentplane.wasm> <out dir> <tag> [source revision]
Prints the manifest digest. The output is deterministic: the same module
gives the same digest.
"""
import hashlib
import json
import os
import shutil
import sys

WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob(out, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest.split(":", 1)[1])
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": digest, "size": len(data)}


def main():
    wasm_path, out, tag = sys.argv[1], sys.argv[2], sys.argv[3]
    revision = sys.argv[4] if len(sys.argv) > 4 else ""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    wasm = open(wasm_path, "rb").read()
    layer = {"mediaType": WASM_LAYER, **blob(out, wasm),
             "annotations": {"org.opencontainers.image.title": "plugin.wasm"}}
    config = {"mediaType": WASM_CONFIG,
              **blob(out, json.dumps({"author": "agentplane", "revision": revision},
                                     sort_keys=True, separators=(",", ":")).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": [layer],
        "annotations": {"org.opencontainers.image.title": "agentplane",
                        "org.opencontainers.image.revision": revision},
    }
    m = blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, **m, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    print(m["digest"])


if __name__ == "__main__":
    main()
