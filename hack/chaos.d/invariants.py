#!/usr/bin/env python3
"""The invariants hack/chaos checks after each fault, read from the cluster
with kubectl (KUBECONFIG). Retries until every one holds or --timeout
passes; prints one JSON line: {"checks": N, "failures": [...], "seconds": S}.

Over the namespaces whose name starts with --prefix:
  installation  every Installation is Ready=True at its generation, its
                config as last applied is in the ConfigMap it owns, and it
                is not displaced (no unavailable-regions annotation, no
                active-region other than its home, no drill lock);
  deployment    each Installation owns exactly one Deployment;
  owner         every object with an ownerReference to an Installation,
                KamachiqProject or Job has a live owner (uid);
  job           no two Jobs of one project share task, role and attempt;
  project       every KamachiqProject is Succeeded;
  drill         every DrDrill has finished its run with verdict Pass, and
                its Installation is back at home (above);
and over the cluster:
  taint         no node keeps the drills' taint (somastack.io/drill-outage).
"""
import argparse
import json
import subprocess
import sys
import time

OWNED = "deployments,services,configmaps,serviceaccounts,networkpolicies,poddisruptionbudgets,jobs,pods,horizontalpodautoscalers"


def kubectl_json(*args):
    out = subprocess.run(["kubectl", *args, "-o", "json"], check=True, capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)["items"]


def cond(obj, kind):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def name(o):
    m = o["metadata"]
    return f'{m.get("namespace", "")}/{m["name"]}'


def check(prefix):
    """Returns (checks, failures)."""
    checks, failures = 0, []

    def expect(ok, what):
        nonlocal checks
        checks += 1
        if not ok:
            failures.append(what)

    ours = lambda o: o["metadata"].get("namespace", "").startswith(prefix)
    insts = [o for o in kubectl_json("get", "installations.somastack.io", "-A") if ours(o)]
    projects = [o for o in kubectl_json("get", "kamachiqprojects.somastack.io", "-A") if ours(o)]
    drills = [o for o in kubectl_json("get", "drdrills.somastack.io", "-A") if ours(o)]
    children = [o for o in kubectl_json("get", OWNED, "-A") if ours(o)]
    uids = {o["metadata"]["uid"] for o in insts + projects + children}

    deployments = {}
    maps = {}
    for c in children:
        for ref in c["metadata"].get("ownerReferences") or []:
            if ref.get("kind") in ("Installation", "KamachiqProject", "Job", "ReplicaSet", "Deployment"):
                if ref["kind"] in ("Installation", "KamachiqProject", "Job"):
                    expect(ref["uid"] in uids, f'owner: {c["kind"]} {name(c)} has no live {ref["kind"]} {ref["name"]}')
                if ref["kind"] == "Installation" and ref.get("controller"):
                    if c["kind"] == "Deployment":
                        deployments.setdefault(ref["uid"], []).append(c["metadata"]["name"])
                    if c["kind"] == "ConfigMap":
                        maps.setdefault(ref["uid"], []).append(c.get("data") or {})

    for i in insts:
        m, spec = i["metadata"], i["spec"]
        ready = cond(i, "Ready")
        gen = m.get("generation")
        expect(
            ready.get("status") == "True" and (i.get("status") or {}).get("observedGeneration") == gen,
            f'installation: {name(i)} not Ready at generation {gen}: {ready.get("reason")}: {ready.get("message", "")[:160]}',
        )
        ann = m.get("annotations") or {}
        active = ann.get("somastack.io/active-region")
        expect(
            "somastack.io/unavailable-regions" not in ann
            and "somastack.io/drill" not in ann
            and active in (None, spec.get("region")),
            f"installation: {name(i)} displaced: {({k: v for k, v in ann.items() if k.startswith('somastack.io/')})}",
        )
        deps = deployments.get(m["uid"], [])
        expect(len(deps) == 1, f"deployment: {name(i)} owns {len(deps)} Deployments: {deps}")
        config = spec.get("config") or {}
        if config:
            have = maps.get(m["uid"], [])
            expect(
                any(all(d.get(k) == v for k, v in config.items()) for d in have),
                f"installation: {name(i)}: its config {config} is in none of its ConfigMaps",
            )

    seen = {}
    for j in (c for c in children if c["kind"] == "Job"):
        labels = j["metadata"].get("labels") or {}
        project = labels.get("kamachiq.somastack.io/project")
        if not project:
            continue
        k = (j["metadata"]["namespace"], project, labels.get("kamachiq.somastack.io/task"),
             labels.get("kamachiq.somastack.io/role"), labels.get("kamachiq.somastack.io/attempt"))
        expect(k not in seen, f'job: {j["metadata"]["name"]} duplicates {seen.get(k)} (project, task, role, attempt {k[1:]})')
        seen[k] = j["metadata"]["name"]

    for p in projects:
        phase = (p.get("status") or {}).get("phase")
        expect(phase == "Succeeded", f'project: {name(p)} is {phase}: {cond(p, "Ready").get("message", "")[:160]}')

    for d in drills:
        st = d.get("status") or {}
        expect(
            st.get("run") is None and st.get("verdict") == "Pass" and bool(st.get("history")),
            f'drill: {name(d)} phase {st.get("phase")} verdict {st.get("verdict")} step {st.get("currentStep")}',
        )

    for n in kubectl_json("get", "nodes"):
        taints = [t for t in (n.get("spec") or {}).get("taints") or [] if t.get("key") == "somastack.io/drill-outage"]
        expect(not taints, f'taint: node {n["metadata"]["name"]} keeps {taints}')
    return checks, failures


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prefix", required=True)
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    t0 = time.time()
    while True:
        try:
            checks, failures = check(a.prefix)
        except (subprocess.SubprocessError, json.JSONDecodeError, KeyError) as e:
            checks, failures = 0, [f"reading the cluster: {e}"]
        if not failures or time.time() - t0 > a.timeout:
            break
        time.sleep(3)
    print(json.dumps({"checks": checks, "failures": failures[:50], "failed": len(failures),
                      "seconds": round(time.time() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
