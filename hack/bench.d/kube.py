#!/usr/bin/env python3
"""Measuring helpers of hack/bench, Python standard library only.

Talks to the API server itself (list + watch, patch), so that times come
from watch events as they arrive, not from polling:

  kube.py wait    KUBECONFIG_JSON --kind installations|deployments --ns-prefix P --count N
                  [--timeout S] [--started FILE]
      Lists and watches the kind; prints the Unix time at which N objects in
      namespaces starting with P were Ready (Installations: condition
      Ready=True at the current generation) or Available (Deployments:
      condition Available=True, every replica updated and available, at the
      current generation). Touches FILE once the first list is in, so the
      caller starts its clock only when nothing can be missed.
  kube.py latency KUBECONFIG_JSON --ns-prefix P --count K
      Changes spec.config of K Installations one at a time (merge patch, as
      `kubectl patch` does) and times each from just before the PATCH to the
      watch event whose status.observedGeneration reaches the generation the
      PATCH returned. Prints JSON: every sample, p50, p99, max (seconds).
  kube.py audit   --logs DIR --from T0 --to T1
      Counts the requests of an audit log (hack/cluster-up.sh's policy: the
      operator's ServiceAccount only) received in [T0, T1): one per request
      (watches counted when they start), by verb and resource. JSON.
  kube.py hist    --before FILE --after FILE --metric NAME [--label K=REGEX]...
      p50 and p99 of what a Prometheus histogram gained between two scrapes,
      as the upper bound of the bucket that holds the quantile. JSON.
  kube.py children --prefix P --to Q < kubectl-get-json
      The objects owned by an Installation, stripped of what the API server
      and controllers set (uid, resourceVersion, managedFields,
      ownerReferences, status, creationTimestamp, generation, allocated
      ClusterIPs), moved from namespace P<i> to Q<i>: a List for kubectl.
  kube.py chart   --name NAME --region REGION --dir DIR < kubectl-get-json
      A Helm chart of the children of Installation NAME: its name templated
      as the release name, its region as the value `region`.

For the KAMACHIQ part (hack/bench.d/project.sh):

  kube.py planner --port-file FILE --tasks N --width W [--fan-in F] [--input-suffix S]
      A planner (docs/planner.md's contract) on a free loopback port, written
      to FILE: answers every request with the bench's DAG, layers of W tasks,
      task i of layer k depending on tasks i..i+F-1 (modulo the width) of
      layer k-1, each input ending in S; 422 when N exceeds maxTasks.
  kube.py until   KUBECONFIG_JSON --path COLLECTION --name NAME --expr PYTHON
                  [--timeout S] [--out FILE] [--started FILE]
      Watches a collection (its URL path) until the object NAME satisfies
      the expression (over `o`, the object; `cond(o, type)` is a condition's
      status); prints the Unix time the event arrived, writes the object.
  kube.py project-children --to NS --setup FILE --jobs FILE < kubectl-get-json
      A project's task Jobs (the latest attempt of each task), agents'
      ServiceAccount and NetworkPolicies, stripped as `children` strips plus
      the Job controller's selector and labels and the operator's verdicts,
      moved to NS: the namespace, ServiceAccount and NetworkPolicies as a
      List (--setup), the Jobs by task (--jobs).
  kube.py jobs-dag KUBECONFIG_JSON --jobs FILE --plan FILE --namespace NS --parallelism P
      Creates those Jobs in NS as the operator schedules the plan's DAG: a
      Job once the Jobs of all its dependencies are Complete (a watch), at
      most P unfinished; prints JSON: start (first POST), end (the last
      Complete event), seconds.
  kube.py jobs-stats --plan FILE < kubectl-get-json
      From finished Jobs and the plan (the plan ConfigMap or plan.json):
      first creation to last completion, the dispatch gap of each task (its
      Job's creation after its dependencies' completions) and each Job's
      creation-to-completion time (whole seconds, as Kubernetes keeps them).

For the drill part (hack/bench.d/drill.sh):

  kube.py pods-ready KUBECONFIG_JSON --namespace NS --selector L --region R --count C
                     [--timeout S] [--started FILE]
      Prints the Unix time of the watch event that made C pods of L, on
      nodes of region R and not being deleted, Ready.
  kube.py stats V...
      Median, min and max. JSON.
"""

import argparse
import base64
import collections
import datetime
import glob
import http.client
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse

API = {
    "installations": "/apis/somastack.io/v1alpha1/installations",
    "deployments": "/apis/apps/v1/deployments",
}
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


class Kube:
    """A client from `kubectl config view --raw --minify --flatten -o json`."""

    def __init__(self, path):
        with open(path) as f:
            cfg = json.load(f)
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        url = urllib.parse.urlparse(cluster["server"])
        self.host, self.port = url.hostname, url.port or 443
        self.ctx = ssl.create_default_context()
        self.ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.headers = {"Accept": "application/json"}
        if "token" in user:
            self.headers["Authorization"] = "Bearer " + user["token"]
        if "client-certificate-data" in user:
            # ssl takes the key pair only from files: a private scratch folder.
            d = tempfile.mkdtemp(prefix="bench-kube-")
            cert, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
            for p, field in ((cert, "client-certificate-data"), (key, "client-key-data")):
                fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, base64.b64decode(user[field]))
                os.close(fd)
            self.ctx.load_cert_chain(cert, key)
            os.remove(cert)
            os.remove(key)
            os.rmdir(d)

    def conn(self, timeout):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def call(self, method, path, body=None, ctype="application/json"):
        c = self.conn(120)
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = ctype
            data = json.dumps(body)
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        out = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {out[:300]!r}")
        return json.loads(out)

    def informer(self, kind, on_event, stop, path=None, query=None):
        """List, then watch from the list's resourceVersion; relists when the
        watch expires (410). on_event(type, object, arrival_monotonic) gets
        the listed objects as ADDED; on_event("SYNCED", None, t) after each list.
        `path` (a collection's URL path) instead of a kind of API; `query`:
        more parameters of the list and the watch (e.g. labelSelector)."""
        path = path or API[kind]
        query = dict(query or {})
        while not stop.is_set():
            lst = self.call("GET", path + ("?" + urllib.parse.urlencode(query) if query else ""))
            now = time.monotonic()
            for item in lst["items"]:
                on_event("ADDED", item, now)
            on_event("SYNCED", None, now)
            rv = lst["metadata"]["resourceVersion"]
            while not stop.is_set():
                q = urllib.parse.urlencode({**query, "watch": "1", "resourceVersion": rv,
                                            "allowWatchBookmarks": "true", "timeoutSeconds": "300"})
                c = self.conn(330)
                c.request("GET", f"{path}?{q}", headers=self.headers)
                r = c.getresponse()
                if r.status != 200:
                    c.close()
                    break
                expired = False
                for line in r:
                    now = time.monotonic()
                    if stop.is_set():
                        break
                    ev = json.loads(line)
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        expired = True
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        on_event(ev["type"], obj, now)
                c.close()
                if expired:
                    break


def condition(obj, kind):
    for c in obj.get("status", {}).get("conditions", []) or []:
        if c.get("type") == kind:
            return c.get("status") == "True"
    return False


def done(obj, kind):
    meta, status = obj["metadata"], obj.get("status", {}) or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False
    if kind == "installations":
        return condition(obj, "Ready")
    want = (obj.get("spec", {}) or {}).get("replicas", 1)
    return (condition(obj, "Available") and status.get("updatedReplicas", 0) >= want
            and status.get("availableReplicas", 0) >= want)


def key(obj):
    return obj["metadata"]["namespace"] + "/" + obj["metadata"]["name"]


def cmd_wait(a):
    kube = Kube(a.kubeconfig)
    state, lock, stop = {}, threading.Lock(), threading.Event()
    result = {}

    def on_event(kind, obj, _now):
        with lock:
            if kind == "SYNCED":
                if a.started and not os.path.exists(a.started):
                    open(a.started, "w").close()
                return
            if not obj["metadata"]["namespace"].startswith(a.ns_prefix):
                return
            if kind == "DELETED":
                state.pop(key(obj), None)
            else:
                state[key(obj)] = done(obj, a.kind)
            if sum(state.values()) >= a.count and "t" not in result:
                result["t"] = time.time()
                stop.set()

    t = threading.Thread(target=kube.informer, args=(a.kind, on_event, stop), daemon=True)
    t.start()
    deadline = time.monotonic() + a.timeout
    last = time.monotonic()
    while not stop.wait(1):
        if time.monotonic() > deadline:
            with lock:
                n = sum(state.values())
            print(f"timeout: {n} of {a.count} {a.kind} ready after {a.timeout}s", file=sys.stderr)
            sys.exit(1)
        if time.monotonic() - last >= 30:
            last = time.monotonic()
            with lock:
                print(f"  ... {sum(state.values())}/{a.count} {a.kind} ready, {len(state)} seen",
                      file=sys.stderr)
    print(f"{result['t']:.3f}")


def percentile(samples, q):
    s = sorted(samples)
    if not s:
        return None
    # nearest rank
    i = max(0, min(len(s) - 1, int(-(-q * len(s) // 1)) - 1))
    return s[i]


def cmd_latency(a):
    kube = Kube(a.kubeconfig)
    seen, cv, stop = {}, threading.Condition(), threading.Event()
    synced = threading.Event()

    def on_event(kind, obj, now):
        with cv:
            if kind == "SYNCED":
                synced.set()
            elif obj["metadata"]["namespace"].startswith(a.ns_prefix) and kind != "DELETED":
                seen[key(obj)] = ((obj.get("status") or {}).get("observedGeneration", 0), now)
            cv.notify_all()

    threading.Thread(target=kube.informer, args=("installations", on_event, stop), daemon=True).start()
    if not synced.wait(120):
        sys.exit("latency: the first list took over 120 s")
    with cv:
        names = sorted(seen)
    # Spread the K changes over the namespaces and the whole set.
    step = max(1, len(names) // a.count)
    picked = names[::step][: a.count]
    samples = []
    stamp = str(int(time.time()))
    for i, k in enumerate(picked):
        ns, name = k.split("/")
        path = f"/apis/somastack.io/v1alpha1/namespaces/{ns}/installations/{name}"
        t0 = time.monotonic()
        obj = kube.call("PATCH", path, {"spec": {"config": {"BENCH_CHANGE": f"{stamp}-{i}"}}},
                        "application/merge-patch+json")
        gen = obj["metadata"]["generation"]
        with cv:
            ok = cv.wait_for(lambda: seen.get(k, (0, 0))[0] >= gen, timeout=a.timeout)
            if not ok:
                sys.exit(f"latency: {k} generation {gen} not observed within {a.timeout}s")
            samples.append(seen[k][1] - t0)
    stop.set()
    print(json.dumps({"count": len(samples), "p50": percentile(samples, 0.5),
                      "p99": percentile(samples, 0.99), "max": max(samples),
                      "samples": [round(s, 4) for s in samples]}))


def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def cmd_audit(a):
    by, total, writes, reads = {}, 0, 0, 0
    files = sorted(glob.glob(os.path.join(a.logs, "audit*.log")), key=os.path.getmtime)
    for path in files:
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                verb, stage = ev.get("verb", ""), ev.get("stage", "")
                if verb == "watch":
                    if stage != "ResponseStarted":
                        continue
                elif stage not in ("ResponseComplete", "Panic"):
                    continue
                t = ts(ev["requestReceivedTimestamp"])
                if not (a.t_from <= t < a.t_to):
                    continue
                ref = ev.get("objectRef") or {}
                res = ref.get("resource", ev.get("requestURI", "?").split("?")[0])
                if ref.get("subresource"):
                    res += "/" + ref["subresource"]
                k = f"{verb} {res}"
                by[k] = by.get(k, 0) + 1
                total += 1
                if verb in WRITES:
                    writes += 1
                else:
                    reads += 1
    print(json.dumps({"total": total, "reads": reads, "writes": writes, "seconds": a.t_to - a.t_from,
                      "by": dict(sorted(by.items(), key=lambda kv: -kv[1]))}))


LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def buckets(path, metric, filters):
    out = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m or m.group(1) != metric + "_bucket":
                continue
            labels = dict(LABEL.findall(m.group(3) or ""))
            if not all(re.search(rx, labels.get(k, "")) for k, rx in filters):
                continue
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            out[le] = out.get(le, 0) + float(m.group(4))
    return out


def cmd_hist(a):
    filters = [f.split("=", 1) for f in a.label]
    before = buckets(a.before, a.metric, filters)
    after = buckets(a.after, a.metric, filters)
    les = sorted(after)
    gained = [(le, after[le] - before.get(le, 0)) for le in les]
    count = gained[-1][1] if gained else 0
    res = {"metric": a.metric, "count": count}
    for q in (0.5, 0.99):
        bound = None
        for le, n in gained:
            if count and n >= q * count:
                bound = le
                break
        res[f"p{int(q * 100)}_le"] = bound if bound != float("inf") else "+Inf"
    print(json.dumps(res))


DROP_META = ("uid", "resourceVersion", "managedFields", "ownerReferences", "creationTimestamp",
             "generation", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers")
DROP_ANNOTATIONS = ("deployment.kubernetes.io/revision", "kubectl.kubernetes.io/last-applied-configuration")


def owned_children(doc):
    """Objects owned by an Installation. ControllerRevisions (the operator's
    revision history, for rollback) are left out: nobody applying manifests
    by hand writes them."""
    for item in doc["items"]:
        refs = item["metadata"].get("ownerReferences") or []
        if item["kind"] == "ControllerRevision":
            continue
        if any(r.get("kind") == "Installation" for r in refs):
            owner = next(r["name"] for r in refs if r.get("kind") == "Installation")
            yield owner, strip(item)


def strip(item):
    item = json.loads(json.dumps(item))
    item.pop("status", None)
    meta = item["metadata"]
    for k in DROP_META:
        meta.pop(k, None)
    ann = meta.get("annotations") or {}
    for k in DROP_ANNOTATIONS:
        ann.pop(k, None)
    if not ann:
        meta.pop("annotations", None)
    if item["kind"] == "Service":
        item["spec"].pop("clusterIP", None)
        item["spec"].pop("clusterIPs", None)
    return item


def cmd_children(a):
    doc = json.load(sys.stdin)
    items, namespaces = [], set()
    for _, item in owned_children(doc):
        ns = item["metadata"]["namespace"]
        assert ns.startswith(a.prefix), ns
        ns = a.to + ns[len(a.prefix):]
        item["metadata"]["namespace"] = ns
        namespaces.add(ns)
        items.append(item)
    nss = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in sorted(namespaces)]
    json.dump({"apiVersion": "v1", "kind": "List", "items": nss + items}, sys.stdout)


def cmd_chart(a):
    doc = json.load(sys.stdin)
    name = re.compile(r"(?<![A-Za-z0-9-])" + re.escape(a.name) + r"(?![A-Za-z0-9])")
    region = '"' + a.region + '"'
    docs = []
    for owner, item in owned_children(doc):
        if owner != a.name:
            continue
        item["metadata"].pop("namespace", None)
        text = json.dumps(item, indent=1, sort_keys=True)
        text = name.sub("{{ .Release.Name }}", text).replace(region, "{{ .Values.region | quote }}")
        docs.append(text)
    if not docs:
        sys.exit(f"chart: no children of Installation {a.name}")
    os.makedirs(os.path.join(a.dir, "templates"), exist_ok=True)
    with open(os.path.join(a.dir, "Chart.yaml"), "w") as f:
        f.write("apiVersion: v2\nname: bench-children\nversion: 0.1.0\n"
                "description: The children hack/bench's operator run rendered for one Installation.\n")
    with open(os.path.join(a.dir, "values.yaml"), "w") as f:
        f.write(f"region: {a.region}\n")
    with open(os.path.join(a.dir, "templates", "children.yaml"), "w") as f:
        f.write("\n---\n".join(docs) + "\n")
    print(len(docs))


# --- KAMACHIQ: the planner of the bench's project, the direct Jobs -------


def dag(n, width, fan_in, suffix):
    """The bench's task DAG: layers of `width` tasks (the last one may be
    shorter); task i of layer k > 0 depends on tasks i, i+1, ..., i+fan_in-1
    (modulo the previous layer's width) of layer k-1. Names l<k>-t<i>."""
    layers = [list(range(min(width, n - k))) for k in range(0, n, width)]
    tasks = []
    for k, layer in enumerate(layers):
        for i in layer:
            deps = []
            if k:
                prev = len(layers[k - 1])
                deps = sorted({f"l{k - 1:03d}-t{(i + j) % prev:04d}" for j in range(min(fan_in, prev))})
            tasks.append({"name": f"l{k:03d}-t{i:04d}", "dependsOn": deps,
                          "input": f"bench task {i} of layer {k} {suffix}".strip()})
    return tasks


def cmd_planner(a):
    """A planner (docs/planner.md's contract) that answers every request
    with dag(): the bench's own, since the reference planner's stages are
    all-to-all and at most 16 wide when followed by another stage."""
    import http.server

    tasks = dag(a.tasks, a.width, a.fan_in, a.input_suffix)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if len(tasks) > req.get("maxTasks", 100):
                code, body = 422, {"error": f"the goal needs {len(tasks)} tasks; the project allows at most "
                                            f"{req.get('maxTasks')} (spec.budget.maxTasks)"}
            else:
                code = 200
                body = {"apiVersion": req.get("apiVersion", "planner.somastack.io/v1alpha1"),
                        "tasks": [dict(t, capsule=req["agent"]) for t in tasks]}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(a.port_file + ".tmp", a.port_file)
    srv.serve_forever()


def cmd_until(a):
    """Watches the collection at --path until the object --name satisfies
    --expr (a Python expression over `o`, the object); prints the Unix time
    the event arrived, writes the object to --out."""
    kube = Kube(a.kubeconfig)
    stop, result = threading.Event(), {}

    def on_event(kind, obj, _now):
        # The file first: the object may already satisfy the expression.
        if kind == "SYNCED":
            if a.started and not os.path.exists(a.started):
                open(a.started, "w").close()
            obj = result.pop("listed", None)
            if obj is None:
                return
        elif a.started and not os.path.exists(a.started):
            if obj["metadata"]["name"] == a.name:
                result["listed"] = obj
            return
        if obj["metadata"]["name"] != a.name or kind == "DELETED" or "t" in result:
            return
        try:
            ok = eval(a.expr, {"o": obj, "cond": condition_of})  # noqa: S307: the bench's own expressions
        except (KeyError, IndexError, TypeError):
            ok = False
        if ok:
            result["t"], result["o"] = time.time(), obj
            stop.set()

    threading.Thread(target=kube.informer, args=(None, on_event, stop, a.path), daemon=True).start()
    if not stop.wait(a.timeout):
        sys.exit(f"until: {a.name} at {a.path} did not satisfy {a.expr} within {a.timeout}s")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result["o"], f)
    print(f"{result['t']:.3f}")


def condition_of(obj, kind):
    """The status ("True", "False", "Unknown") of condition `kind`, or None."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status")
    return None


JOB_DROP_LABELS = ("controller-uid", "job-name", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name")
JOB_DROP_ANNOTATIONS = ("kamachiq.somastack.io/verdict", "kamachiq.somastack.io/reason",
                        "kamachiq.somastack.io/output", "batch.kubernetes.io/job-tracking")


def plan_tasks(path):
    with open(path) as f:
        doc = json.load(f)
    if doc.get("kind") == "ConfigMap":
        doc = json.loads(doc["data"]["plan.json"])
    return doc["tasks"] if isinstance(doc, dict) else doc


def cmd_project_children(a):
    """The objects of a project the operator made for its tasks (its agents'
    ServiceAccount and NetworkPolicies, the task Jobs of the accepted
    attempts), stripped as `children` strips, moved to namespace --to: a
    List of the namespace and the others (--setup), the Jobs keyed by task
    (--jobs)."""
    doc = json.load(sys.stdin)
    setup = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": a.to, "labels": {"somastack.io/bench": "true"}}}]
    jobs = {}
    for item in doc["items"]:
        labels = item["metadata"].get("labels") or {}
        if item["kind"] == "Job":
            if labels.get("kamachiq.somastack.io/role") != "task":
                continue
            task = labels["kamachiq.somastack.io/task"]
            attempt = int(labels.get("kamachiq.somastack.io/attempt", "1"))
            if task in jobs and jobs[task][0] > attempt:
                continue
            job = strip(item)
            ann = job["metadata"].get("annotations") or {}
            for k in JOB_DROP_ANNOTATIONS:
                ann.pop(k, None)
            if not ann:
                job["metadata"].pop("annotations", None)
            job["spec"].pop("selector", None)
            job["spec"].pop("manualSelector", None)
            tl = job["spec"]["template"]["metadata"].get("labels") or {}
            for k in JOB_DROP_LABELS:
                tl.pop(k, None)
            for k in JOB_DROP_LABELS:
                job["metadata"].get("labels", {}).pop(k, None)
            job["metadata"]["namespace"] = a.to
            jobs[task] = (attempt, job)
        elif item["kind"] in ("ServiceAccount", "NetworkPolicy"):
            obj = strip(item)
            obj["metadata"]["namespace"] = a.to
            setup.append(obj)
    with open(a.setup, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": setup}, f)
    with open(a.jobs, "w") as f:
        json.dump({t: j for t, (_, j) in jobs.items()}, f)
    print(len(jobs))


def cmd_jobs_dag(a):
    """The direct run: creates the Jobs of --jobs (kube.py project-children)
    in namespace --namespace, each once every Job of the tasks it depends on
    (the plan, --plan) has completed, at most --parallelism unfinished at a
    time, as the operator schedules a project; --creators POSTs at a time.
    One watch of the namespace's Jobs tells completions. Prints JSON: start
    (just before the first POST), end (the watch event of the last
    completion), seconds."""
    import concurrent.futures

    kube = Kube(a.kubeconfig)
    with open(a.jobs) as f:
        jobs = json.load(f)
    tasks = plan_tasks(a.plan)
    deps = {t["name"]: list(t.get("dependsOn") or []) for t in tasks}
    missing = sorted(set(deps) - set(jobs))
    if missing:
        sys.exit(f"jobs-dag: no Job for {len(missing)} tasks, e.g. {missing[:3]}")
    order = [t["name"] for t in tasks]
    name_of = {jobs[t]["metadata"]["name"]: t for t in order}
    waiting = {t: len(set(deps[t])) for t in order}
    dependents = {t: [] for t in order}
    for t in order:
        for d in set(deps[t]):
            dependents[d].append(t)
    ready = collections.deque(t for t in order if not waiting[t])
    cv, stop, synced = threading.Condition(), threading.Event(), threading.Event()
    done, failed, last = set(), set(), {}

    def on_event(kind, obj, now):
        with cv:
            if kind == "SYNCED":
                synced.set()
            elif kind != "DELETED":
                t = name_of.get(obj["metadata"]["name"])
                if t is not None and t not in done:
                    if condition_of(obj, "Complete") == "True":
                        done.add(t)
                        last["t"] = time.time()
                        for u in dependents[t]:
                            waiting[u] -= 1
                            if not waiting[u]:
                                ready.append(u)
                    elif condition_of(obj, "Failed") == "True":
                        failed.add(t)
            cv.notify_all()

    path = f"/apis/batch/v1/namespaces/{a.namespace}/jobs"
    threading.Thread(target=kube.informer, args=(None, on_event, stop, path), daemon=True).start()
    if not synced.wait(120):
        sys.exit("jobs-dag: the first list took over 120 s")
    pool = concurrent.futures.ThreadPoolExecutor(a.creators)
    errors, created = [], [0]

    def create(t):
        try:
            kube.call("POST", path, jobs[t])
        except Exception as e:  # reported below
            errors.append(f"{t}: {e}")

    start = time.time()
    deadline = time.monotonic() + a.timeout
    with cv:
        while len(done) < len(order):
            if failed or errors:
                sys.exit(f"jobs-dag: failed: {sorted(failed)[:3]} {errors[:3]}")
            while ready and created[0] - len(done) < a.parallelism:
                created[0] += 1
                pool.submit(create, ready.popleft())
            if time.monotonic() > deadline:
                sys.exit(f"jobs-dag: {len(done)} of {len(order)} Jobs complete after {a.timeout}s")
            cv.wait(1)
    stop.set()
    pool.shutdown()
    print(json.dumps({"start": round(start, 3), "end": round(last["t"], 3),
                      "seconds": round(last["t"] - start, 3), "jobs": len(order)}))


def cmd_jobs_stats(a):
    """From a dump of finished task Jobs (kubectl get jobs -o json) and the
    plan: the first creation to the last completion, and per task the
    dispatch gap (its Job created after the last of its dependencies' Jobs
    completed) and the Job's own run (creation to completion). Kubernetes
    records these times in whole seconds. JSON."""
    doc = json.load(sys.stdin)
    tasks = plan_tasks(a.plan)
    jobs = {}
    for j in doc["items"]:
        labels = j["metadata"].get("labels") or {}
        if labels.get("kamachiq.somastack.io/role", "task") != "task":
            continue
        t = labels.get("kamachiq.somastack.io/task")
        st = j.get("status") or {}
        if t and st.get("completionTime"):
            jobs[t] = (ts(j["metadata"]["creationTimestamp"]), ts(st["completionTime"]))
    gaps = [jobs[t["name"]][0] - max(jobs[d][1] for d in t["dependsOn"])
            for t in tasks if t.get("dependsOn") and t["name"] in jobs and all(d in jobs for d in t["dependsOn"])]
    runs = [c - s for s, c in jobs.values()]
    first = min(s for s, _ in jobs.values()) if jobs else 0
    end = max(c for _, c in jobs.values()) if jobs else 0
    mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
    print(json.dumps({"jobs": len(jobs), "span": end - first, "gap_mean": mean(gaps),
                      "gap_p50": percentile(gaps, 0.5), "gap_max": max(gaps) if gaps else None,
                      "run_mean": mean(runs), "run_p50": percentile(runs, 0.5)}))


# --- Drills: pods Ready in a region ---------------------------------------


def cmd_pods_ready(a):
    """Watches the pods of --namespace matching --selector; prints the Unix
    time the event arrived that made --count of them, on nodes of --region
    and not being deleted, Ready. Touches --started once listed."""
    kube = Kube(a.kubeconfig)
    nodes = kube.call("GET", "/api/v1/nodes")["items"]
    region = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get("topology.kubernetes.io/region")
              for n in nodes}
    state, stop, result, synced = {}, threading.Event(), {}, []

    def on_event(kind, obj, _now):
        if kind == "SYNCED":
            # The file first: the pods may already be Ready.
            if a.started and not os.path.exists(a.started):
                open(a.started, "w").close()
            synced.append(True)
        else:
            k = obj["metadata"]["name"]
            if kind == "DELETED" or obj["metadata"].get("deletionTimestamp"):
                state.pop(k, None)
            else:
                state[k] = (region.get((obj.get("spec") or {}).get("nodeName")) == a.region
                            and condition_of(obj, "Ready") == "True")
        if synced and sum(state.values()) >= a.count and "t" not in result:
            result["t"] = time.time()
            stop.set()

    path = f"/api/v1/namespaces/{a.namespace}/pods"
    threading.Thread(target=kube.informer, args=(None, on_event, stop, path, {"labelSelector": a.selector}),
                     daemon=True).start()
    if not stop.wait(a.timeout):
        sys.exit(f"pods-ready: not {a.count} pods Ready in {a.region} within {a.timeout}s")
    print(f"{result['t']:.3f}")


def cmd_stats(a):
    """Median, min and max of the numbers given. JSON."""
    v = sorted(float(x) for x in a.values)
    n = len(v)
    med = (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else None
    print(json.dumps({"n": n, "median": med, "min": v[0] if v else None, "max": v[-1] if v else None}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("kubeconfig")
    w.add_argument("--kind", choices=sorted(API), required=True)
    w.add_argument("--ns-prefix", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--timeout", type=float, default=3600)
    w.add_argument("--started")
    lat = sub.add_parser("latency")
    lat.add_argument("kubeconfig")
    lat.add_argument("--ns-prefix", required=True)
    lat.add_argument("--count", type=int, required=True)
    lat.add_argument("--timeout", type=float, default=120)
    au = sub.add_parser("audit")
    au.add_argument("--logs", required=True)
    au.add_argument("--from", dest="t_from", type=float, required=True)
    au.add_argument("--to", dest="t_to", type=float, required=True)
    h = sub.add_parser("hist")
    h.add_argument("--before", required=True)
    h.add_argument("--after", required=True)
    h.add_argument("--metric", required=True)
    h.add_argument("--label", action="append", default=[])
    c = sub.add_parser("children")
    c.add_argument("--prefix", required=True)
    c.add_argument("--to", required=True)
    ch = sub.add_parser("chart")
    ch.add_argument("--name", required=True)
    ch.add_argument("--region", required=True)
    ch.add_argument("--dir", required=True)
    pl = sub.add_parser("planner")
    pl.add_argument("--port-file", required=True)
    pl.add_argument("--tasks", type=int, required=True)
    pl.add_argument("--width", type=int, required=True)
    pl.add_argument("--fan-in", type=int, default=4)
    pl.add_argument("--input-suffix", default="")
    u = sub.add_parser("until")
    u.add_argument("kubeconfig")
    u.add_argument("--path", required=True)
    u.add_argument("--name", required=True)
    u.add_argument("--expr", required=True)
    u.add_argument("--timeout", type=float, default=3600)
    u.add_argument("--out")
    u.add_argument("--started")
    pc = sub.add_parser("project-children")
    pc.add_argument("--to", required=True)
    pc.add_argument("--setup", required=True)
    pc.add_argument("--jobs", required=True)
    jd = sub.add_parser("jobs-dag")
    jd.add_argument("kubeconfig")
    jd.add_argument("--jobs", required=True)
    jd.add_argument("--plan", required=True)
    jd.add_argument("--namespace", required=True)
    jd.add_argument("--parallelism", type=int, required=True)
    jd.add_argument("--creators", type=int, default=4)
    jd.add_argument("--timeout", type=float, default=3600)
    js = sub.add_parser("jobs-stats")
    js.add_argument("--plan", required=True)
    pr = sub.add_parser("pods-ready")
    pr.add_argument("kubeconfig")
    pr.add_argument("--namespace", required=True)
    pr.add_argument("--selector", required=True)
    pr.add_argument("--region", required=True)
    pr.add_argument("--count", type=int, required=True)
    pr.add_argument("--timeout", type=float, default=600)
    pr.add_argument("--started")
    st = sub.add_parser("stats")
    st.add_argument("values", nargs="*")
    a = p.parse_args()
    {"wait": cmd_wait, "latency": cmd_latency, "audit": cmd_audit, "hist": cmd_hist,
     "children": cmd_children, "chart": cmd_chart, "planner": cmd_planner, "until": cmd_until,
     "project-children": cmd_project_children, "jobs-dag": cmd_jobs_dag, "jobs-stats": cmd_jobs_stats,
     "pods-ready": cmd_pods_ready, "stats": cmd_stats}[a.cmd](a)


if __name__ == "__main__":
    main()
