#!/usr/bin/env python3
"""Asserts what a user sees after `hack/run.sh` on the local cluster: the
example story ran on real pods. Called by `hack/run.sh --check`.

    check-story.py NAMESPACE OPERATOR_NAMESPACE OPERATOR_RELEASE

Every check reads the cluster the way a user would (kubectl, and HTTP to the
Installation's Service); nothing here knows the operator's internals.
"""

import json
import subprocess
import sys
import time
import urllib.request

NS, OP_NS, RELEASE = sys.argv[1:4]
REAL = "somastack.io/real-node"
failures = []


def kubectl(*args, check=True):
    out = subprocess.run(["kubectl", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out


def get(*args):
    return json.loads(kubectl("get", "-o", "json", *args).stdout)


def expect(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


def wait(what, probe, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            print(f"      (waited {timeout}s for {what})", flush=True)
            return value
        time.sleep(1)


def sentences(text):
    """The agent's sentence split, roughly: enough to recognize its output."""
    out, cur = [], ""
    for ch in text.replace("\n", " "):
        cur += ch
        if ch in ".!?":
            if cur.strip():
                out.append(" ".join(cur.split()))
            cur = ""
    if cur.strip():
        out.append(" ".join(cur.split()))
    return out


real_nodes = {n["metadata"]["name"] for n in get("nodes", "-l", f"{REAL}=true")["items"]}
expect(len(real_nodes) >= 2, f"the cluster has real nodes: {sorted(real_nodes)}")


def on_real_pods(pods, what):
    for p in pods:
        name, node = p["metadata"]["name"], p["spec"].get("nodeName", "")
        statuses = p.get("status", {}).get("containerStatuses", [])
        ids = [s.get("containerID", "") for s in statuses]
        expect(node in real_nodes, f"{what} pod {name} runs on real node {node!r}")
        expect(
            bool(ids) and all(i.startswith("containerd://") for i in ids),
            f"{what} pod {name} has containerd container IDs {ids}",
        )
        expect(all(s.get("ready") for s in statuses), f"{what} pod {name} is ready (real readiness probe)")


# 1. The Installation: Ready, its pods real, its Service answering.
inst = get("-n", NS, "installation", "summarizer")
ready = [c for c in inst["status"].get("conditions", []) if c["type"] == "Ready"]
expect(ready and ready[0]["status"] == "True", "Installation summarizer is Ready")
pods = get("-n", NS, "pods", "-l", "somastack.io/installation=summarizer")["items"]
pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
expect(len(pods) == 2, f"Installation summarizer has 2 pods ({len(pods)})")
on_real_pods(pods, "summarizer")
expect(
    all(p["spec"]["nodeName"] == "real-eu-west-1" for p in pods),
    "after the drill, the summarizer is home in eu-west-1 (node real-eu-west-1)",
)
ip = get("-n", NS, "service", "summarizer")["spec"]["clusterIP"]
text = (
    "Residency rules keep confidential data in the European Union. "
    "The operator places each workload only on nodes of its region. "
    "A drill proves that the workload survives the loss of its region. "
    "Nothing here leaves the machine."
)
body = json.dumps({"text": text, "maxSentences": 2}).encode()
request = urllib.request.Request(
    f"http://{ip}:8080/v1/summarize", data=body, headers={"Content-Type": "application/json"}
)
# The drill has just brought the pods home: the Service's endpoints and the
# node's forwarding rules follow within seconds, so a user's first request may
# time out. Ask as a user would, for up to 30 s, and say how long it took.
started, last_error, answer = time.monotonic(), None, None
while answer is None and time.monotonic() - started < 30:
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            answer = json.loads(r.read())
    except Exception as e:  # noqa: BLE001 - retried, then the finding
        last_error = e
        time.sleep(1)
if answer is None:
    expect(False, f"POST /v1/summarize through Service {ip}:8080 for 30 s: {last_error}")
else:
    got = answer.get("sentences", [])
    expect(
        len(got) == 2 and all(s in sentences(text) for s in got),
        f"POST /v1/summarize through Service {ip}:8080 answers 2 sentences of the text "
        f"(after {time.monotonic() - started:.1f} s): {got}",
    )

# 2. The drill: passed, with a measured RTO, after moving real pods.
drill = get("-n", NS, "drdrill", "summarizer-region-outage")
st = drill.get("status", {})
rto = st.get("measuredRtoSeconds")
expect(st.get("phase") == "Succeeded" and st.get("verdict") == "Pass",
       f"the drill Passed (phase {st.get('phase')}, verdict {st.get('verdict')})")
expect(isinstance(rto, (int, float)) and 0 < rto <= 120, f"the drill measured an RTO within 120s: {rto}s")
timeline = " | ".join(f"{e.get('step')}: {e.get('message', '')}" for e in st.get("timeline", []))
expect("eu-central-1" in timeline and "eu-west-1" in timeline,
       f"the drill's timeline names the failover and the way home: {timeline[:400]}")
expect(inst["status"].get("activeRegion") == "eu-west-1", f"active region {inst['status'].get('activeRegion')}")

# 3. The project: succeeded, its results computed by the agent.
project = get("-n", NS, "kamachiqproject", "market-brief")
ok = [c for c in project["status"].get("conditions", []) if c["type"] == "Succeeded"]
expect(ok and ok[0]["status"] == "True", f"project market-brief Succeeded: {ok[0]['message'] if ok else 'no condition'}")
results = get("-n", NS, "configmap", "market-brief-results").get("data", {})
tasks = {t["name"]: t for t in project["spec"]["tasks"]}
for name, task in tasks.items():
    out = results.get(name, "")
    inputs = sentences(task["input"])
    expect(bool(out) and out.strip() != task["input"].strip(),
           f"result of {name} is not its input echoed ({len(out)} bytes)")
    if not task.get("dependsOn"):
        lines = [l for l in out.splitlines() if l.strip()]
        expect(0 < len(lines) < len(inputs) and all(l in inputs for l in lines),
               f"result of {name}: {len(lines)} of its {len(inputs)} input sentences, chosen by the agent")
brief = results.get("write-brief", "")
for dep in tasks["write-brief"].get("dependsOn", []):
    dep_lines = [l for l in results.get(dep, "").splitlines() if l.strip()]
    expect(any(l in brief for l in dep_lines), f"write-brief combines the output of {dep}")
# Moderated before orchestration: the goal, every input and every output,
# each by a moderation Job that allowed it.
mod_jobs = get("-n", NS, "jobs", "-l",
               "kamachiq.somastack.io/project=market-brief,kamachiq.somastack.io/role=moderation")["items"]
stages = [j["metadata"]["labels"].get("kamachiq.somastack.io/stage") for j in mod_jobs]
decisions = {j["metadata"].get("annotations", {}).get("kamachiq.somastack.io/decision") for j in mod_jobs}
expect(stages.count("goal") == 1 and stages.count("input") == len(tasks) and stages.count("output") == len(tasks),
       f"moderation checked the goal, each input and each output: {sorted(stages)}")
expect(decisions == {"Allow"}, f"every moderation Job allowed what it checked: {decisions}")
job_pods = get("-n", NS, "pods", "-l", "kamachiq.somastack.io/project=market-brief")["items"]
expect(len(job_pods) >= 3, f"the project's tasks ran as {len(job_pods)} pods")
for p in job_pods:
    node = p["spec"].get("nodeName", "")
    cid = [s.get("containerID", "") for s in p.get("status", {}).get("containerStatuses", [])]
    expect(node in real_nodes and all(i.startswith("containerd://") for i in cid) and cid,
           f"task pod {p['metadata']['name']} ran on real node {node} ({cid})")

# 4. The operator: two pods on real nodes, one leader, the webhook served
# from a pod, and the other pod taking over when the leader goes.
op_pods = get("-n", OP_NS, "pods", "-l", "app.kubernetes.io/component=operator")["items"]
op_pods = [p for p in op_pods if not p["metadata"].get("deletionTimestamp")]
expect(len(op_pods) == 2, f"the chart's defaults run 2 operator pods ({len(op_pods)})")
on_real_pods(op_pods, "operator")
names = {p["metadata"]["name"] for p in op_pods}
lease = get("-n", OP_NS, "lease", RELEASE)
holder = lease["spec"].get("holderIdentity")
expect(holder in names, f"Lease {RELEASE} is held by operator pod {holder}")

violating = {
    "apiVersion": "somastack.io/v1alpha1", "kind": "Installation",
    "metadata": {"name": "summarizer-in-virginia", "namespace": NS},
    "spec": {"capsule": {"package": "summarizer", "version": "1.4.2"}, "region": "us-east-1"},
}
out = subprocess.run(["kubectl", "apply", "--dry-run=server", "-f", "-"],
                     input=json.dumps(violating), capture_output=True, text=True)
expect(out.returncode != 0 and "denied the request" in out.stderr and "us-east-1" in out.stderr,
       f"an Installation outside the residency rule is refused by the webhook: {out.stderr.strip()[:300]}")

# The deleted leader releases the Lease as it stops; the standing follower
# or the Deployment's replacement pod, whichever asks first, takes it.
kubectl("-n", OP_NS, "delete", "pod", holder, "--wait=false")


def new_leader():
    h = get("-n", OP_NS, "lease", RELEASE)["spec"].get("holderIdentity")
    if not h or h == holder:
        return None
    live = get("-n", OP_NS, "pods", "-l", "app.kubernetes.io/component=operator")["items"]
    return h if any(p["metadata"]["name"] == h and not p["metadata"].get("deletionTimestamp") for p in live) else None


new_holder = wait("another operator pod to lead", new_leader, 90)
role = "the standing follower" if new_holder in names else "the replacement pod"
expect(bool(new_holder), f"after deleting leader {holder}, {new_holder or 'no pod'} ({role}) holds the Lease")
bundle = get("policybundle", "acme-eu")
limit = bundle["spec"]["limits"]["maxReplicas"]
for value in (limit + 1, limit):
    kubectl("patch", "policybundle", "acme-eu", "--type=merge", "-p",
            json.dumps({"spec": {"limits": {"maxReplicas": value}}}))
    seen = wait("the new leader to reconcile the bundle",
                lambda: (b := get("policybundle", "acme-eu"))["status"].get("observedGeneration")
                == b["metadata"]["generation"], 60)
    expect(bool(seen), f"the new leader reconciles a change (maxReplicas {value})")
back = wait("the operator Deployment to have 2 ready pods again",
            lambda: get("-n", OP_NS, "deployment", RELEASE)["status"].get("readyReplicas") == 2, 120)
expect(bool(back), "the operator Deployment is back to 2 ready pods")

if failures:
    print(f"\n{len(failures)} check(s) failed", file=sys.stderr)
    sys.exit(1)
