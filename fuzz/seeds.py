#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets from the repository's own data.

Seeds come from examples/, tests/invalid/, docs/planner.md, the schedules
the drill tests use and keys made by openssl. Run it from anywhere, then
minimise each corpus with `hack/fuzz.sh --cmin` (docs/development.md,
"Fuzzing"); the minimised corpus is what fuzz/corpus/ keeps. Needs PyYAML
and openssl; CI never runs it (the corpus is committed).
"""

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz", "seeds")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def docs(path):
    return [d for d in yaml.safe_load_all(read(path)) if d]


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data, indent=None, separators=(",", ":")).encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


examples = {}
for name in sorted(os.listdir(os.path.join(ROOT, "examples"))):
    if name.endswith(".yaml"):
        for d in docs(f"examples/{name}"):
            examples.setdefault(d["kind"], []).append(d)
invalid = {}
for name in sorted(os.listdir(os.path.join(ROOT, "tests", "invalid"))):
    for d in docs(f"tests/invalid/{name}"):
        invalid.setdefault(d["kind"], []).append(d)

capsule = examples["Capsule"][0]
bundle = examples["PolicyBundle"][0]

# Public keys of the kinds a PolicyBundle may be given, made by openssl.
pems = [read("examples/keys/acme-agents-demo.pub"), read("fuzz/keys/fuzz-ed25519.pub")]
with tempfile.TemporaryDirectory() as tmp:
    for args in (
        ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
        ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        ["-algorithm", "ed448"],
    ):
        key = os.path.join(tmp, "k")
        subprocess.run(["openssl", "genpkey", *args, "-out", key], check=True, capture_output=True)
        pub = subprocess.run(["openssl", "pkey", "-in", key, "-pubout"], check=True, capture_output=True, text=True)
        pems.append(pub.stdout)

# signing: capsule specs in JSON, public keys, a payload and a signature.
for c in examples["Capsule"] + invalid.get("Capsule", []):
    if "spec" in c:
        write("signing", c["spec"])
for pem in pems:
    write("signing", pem)
write("signing", capsule["spec"]["signature"]["value"])
write(
    "signing",
    "somastack.io/capsule-signature/v1\npublisher:acme-agents\npackage:summarizer\nversion:1.4.2\n",
)

# policy: cases over the example bundle and capsule, and the invalid bundles.
named = {"name": bundle["metadata"]["name"], "spec": bundle["spec"]}
write("policy", {})
write("policy", {"region": "eu-west-1", "replicas": 2, "approved": True, "labels": {"somastack.io/tenant": "acme"}})
write("policy", {"region": "us-east-1", "replicas": 20, "approved": False})
audit = copy.deepcopy(named)
audit["name"] = "acme-audit"
audit["spec"]["enforcement"] = "Audit"
audit["spec"]["residency"]["rules"][0]["allowedRegions"] = ["eu-central-1"]
audit["spec"]["limits"] = {"maxReplicas": 1, "maxCpu": "100m", "maxMemory": "64Mi"}
write("policy", {"bundles": [named, audit], "region": "eu-west-1", "replicas": 2, "approved": True})
stop = copy.deepcopy(named)
stop["name"] = "acme-stop"
stop["spec"]["killSwitch"] = {"engaged": True, "reason": "incident 42"}
stop["spec"]["projects"] = {"allowedPlannerUrls": ["http://planner.tenant-acme.svc:8080/plan"]}
write("policy", {"bundles": [stop, named], "region": "eu-central-1", "replicas": 1,
                 "plannerUrl": "http://planner.tenant-acme.svc:8080/plan/x"})
write("policy", {"bundles": [stop], "plannerUrl": "http://user:s3cret-token@planner.tenant-acme.svc:8080/plan?key=abcdef"})
# A bundle that requires a signature but trusts no key, with and without
# the example bundle, which trusts the capsule's (found by the fuzzer: the
# first bundle listing a key can satisfy what the other requires).
strict = copy.deepcopy(named)
strict["name"] = "acme-strict"
del strict["spec"]["trust"]["publishers"]
write("policy", {"bundles": [strict, named], "region": "eu-central-1", "replicas": 1, "approved": True})
for b in invalid.get("PolicyBundle", []):
    if "spec" in b:
        write("policy", {"bundles": [named, {"name": b["metadata"]["name"], "spec": b["spec"]}]})
write("policy", "https://planner.example/plan?token=abc")

# planner: the answers docs/planner.md shows, the example project's tasks
# as an answer, and the plans tests/invalid refuses.
for block in re.findall(r"```json\n(.*?)```", read("docs/planner.md"), re.S):
    doc = json.loads(block)
    if "tasks" in doc or "error" in doc:
        write("planner", doc)
api = "planner.somastack.io/v1alpha1"
for p in examples["KamachiqProject"] + invalid.get("KamachiqProject", []):
    tasks = p.get("spec", {}).get("tasks")
    if tasks:
        write("planner", {"apiVersion": api, "tasks": tasks})
chain = [{"name": f"t{i}", "capsule": {"package": "summarizer", "version": "1.4.2"},
          "dependsOn": [f"t{i - 1}"] if i else []} for i in range(20)]
write("planner", {"apiVersion": api, "tasks": chain})
cycle = copy.deepcopy(chain[:3])
cycle[0]["dependsOn"] = ["t2"]
write("planner", {"apiVersion": api, "tasks": cycle})
write("planner", {"apiVersion": "planner.somastack.io/v2", "tasks": []})

# cron: the schedules of the examples, the drill tests and tests/invalid.
schedules = {"0 3 * * 1", "@daily", "@hourly", "@weekly", "*/5 * * * *", "0,1 3 * * *", "0,30 * * * *",
             "* * * * *", "0 0 1 1 *", "0 3 1 1 *", "0 0 29 2 *", "0 12 * * MON-FRI", "not a schedule",
             "99 99 99 99 99", "0 0 31 2 *"}
for d in invalid.get("DrDrill", []) + examples["DrDrill"]:
    s = d.get("spec", {}).get("schedule")
    if s:
        schedules.add(s)
for s in sorted(schedules):
    write("cron", s)


# admission: AdmissionReviews of every example and invalid object, created
# and updated, by the users the examples name.
def review(obj, op="CREATE", old=None, user="publisher@acme.example"):
    plural = {"Capsule": "capsules", "PolicyBundle": "policybundles", "Installation": "installations",
              "DrDrill": "drdrills", "KamachiqProject": "kamachiqprojects"}.get(obj.get("kind"), "capsules")
    meta = obj.get("metadata", {})
    req = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "somastack.io", "version": "v1alpha1", "kind": obj.get("kind", "Capsule")},
        "resource": {"group": "somastack.io", "version": "v1alpha1", "resource": plural},
        "name": meta.get("name", ""),
        "operation": op,
        "userInfo": {"username": user, "groups": ["acme:publishers", "system:authenticated"]},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }
    if "namespace" in meta:
        req["namespace"] = meta["namespace"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}


for kind, objs in sorted(examples.items()):
    for obj in objs:
        if kind == "Namespace" or obj.get("apiVersion", "").startswith("rbac"):
            continue
        write("admission", review(obj))
        write("admission", review(obj, "UPDATE", obj, "reviewer@acme.example"))
for kind, objs in sorted(invalid.items()):
    for obj in objs:
        write("admission", review(obj))
# examples/25-capsule-review.yaml is applied over the Capsule: the two together.
unreviewed = copy.deepcopy(capsule)
unreviewed["metadata"]["annotations"] = {"review.somastack.io/submitted-by": "publisher@acme.example"}
reviewed = copy.deepcopy(unreviewed)
reviewed["metadata"]["annotations"].update(examples["Capsule"][-1]["metadata"]["annotations"])
write("admission", review(reviewed, "UPDATE", unreviewed, "reviewer@acme.example"))
write("admission", review(reviewed, "UPDATE", unreviewed, "publisher@acme.example"))
drill = copy.deepcopy(examples["DrDrill"][0])
drill["spec"]["scope"] = "Region"
drill["spec"]["schedule"] = "*/5 * * * *"
drill["metadata"]["annotations"] = {"drills.somastack.io/run": "2026-11-26T23:00:00Z",
                                    "drills.somastack.io/requested-by": "{\"user\":\"admin\"}"}
write("admission", review(drill, "UPDATE", examples["DrDrill"][0], "tenant@acme.example"))
write("admission", review(examples["Capsule"][0], "DELETE", examples["Capsule"][0]))
print(f"seeds written under {OUT}")
