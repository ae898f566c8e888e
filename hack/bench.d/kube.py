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
"""

import argparse
import base64
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

    def informer(self, kind, on_event, stop):
        """List, then watch from the list's resourceVersion; relists when the
        watch expires (410). on_event(type, object, arrival_monotonic) gets
        the listed objects as ADDED; on_event("SYNCED", None, t) after each list."""
        path = API[kind]
        while not stop.is_set():
            lst = self.call("GET", path)
            now = time.monotonic()
            for item in lst["items"]:
                on_event("ADDED", item, now)
            on_event("SYNCED", None, now)
            rv = lst["metadata"]["resourceVersion"]
            while not stop.is_set():
                q = urllib.parse.urlencode({"watch": "1", "resourceVersion": rv,
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
    a = p.parse_args()
    {"wait": cmd_wait, "latency": cmd_latency, "audit": cmd_audit, "hist": cmd_hist,
     "children": cmd_children, "chart": cmd_chart}[a.cmd](a)


if __name__ == "__main__":
    main()
