#!/usr/bin/env bash
# Lints what the project puts in a cluster, without a cluster:
#   - the Helm chart, rendered by `helm template` with its defaults and in
#     cert-manager mode (with the ServiceMonitor);
#   - the children the operator provisions for the Installations and
#     KamachiqProjects of examples/, rendered by the operator's own pure functions
#     (controllers/examples/render-children.rs).
# with kube-score (built by hack/build-checkers.sh). Every finding must be
# allowed by a row of the table in docs/operations.md, section "Linters"
# (the only allow-list: a linter, a check, the objects, the finding and why);
# any other finding fails the script. kube-linter is not run: the Go module
# proxy refuses its module (docs/operations.md, "Linters").
#
#   hack/lint-manifests.sh           lint, print a summary table, exit 1 on a finding not allowed
#   hack/lint-manifests.sh --keep D  also keep the rendered manifests and kube-score's JSON in D
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

keep=""
if [[ "${1:-}" == "--keep" ]]; then
  keep="${2:?--keep needs a folder}"
fi

command -v helm >/dev/null || die "helm is not built: run hack/build-tools.sh"
"$ROOT/hack/build-checkers.sh" >&2
PATH="$("$ROOT/hack/build-checkers.sh" --print):$PATH"
command -v kube-score >/dev/null || die "kube-score is not on PATH after hack/build-checkers.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chart="$ROOT/charts/somastack-operator"

log "rendering the chart (defaults, and cert-manager mode)"
helm template "$OPERATOR_RELEASE" "$chart" --namespace "$OPERATOR_NAMESPACE" >"$work/chart.yaml"
helm template "$OPERATOR_RELEASE" "$chart" --namespace "$OPERATOR_NAMESPACE" \
  --set webhook.certManager.enabled=true,metrics.serviceMonitor.enabled=true >"$work/chart-cert-manager.yaml"

log "rendering the children of the Installations and KamachiqProjects in examples/ (cargo run --example render-children)"
(cd "$ROOT" && cargo run --quiet --locked -p somastack-controllers --example render-children -- examples/) \
  >"$work/children.yaml"

inputs=(chart chart-cert-manager children)
for input in "${inputs[@]}"; do
  # kube-score exits 1 when it finds anything; its JSON says what.
  kube-score score --output-format json --kubernetes-version v1.34 "$work/$input.yaml" \
    >"$work/$input.json" 2>"$work/$input.err" || true
  [[ -s "$work/$input.json" ]] || { cat "$work/$input.err" >&2; die "kube-score read nothing from $input"; }
done
if [[ -n "$keep" ]]; then
  mkdir -p "$keep" && cp "$work"/*.yaml "$work"/*.json "$keep/"
fi

python3 - "$ROOT/docs/operations.md" "$work" "${inputs[@]}" <<'PY'
import fnmatch, json, re, sys

doc, work, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]

# The allow-list: the table of the "Linters" section of docs/operations.md,
# rows | linter | check | objects | finding | why |.
allowed, in_section = [], False
for line in open(doc, encoding="utf-8"):
    if line.startswith("## "):
        in_section = line.strip() == "## Linters"
        continue
    if not in_section or not line.startswith("|"):
        continue
    cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
    if len(cells) != 5 or cells[0] in ("linter", "") or set(cells[0]) <= set("-: "):
        continue
    linter, check, objects, finding, why = cells
    if not why:
        sys.exit(f"docs/operations.md, Linters: the row for {check} {objects} gives no reason")
    allowed.append({"linter": linter, "check": check, "objects": objects,
                    "finding": finding, "used": 0})
if not allowed:
    sys.exit("docs/operations.md has no allow-list table in its section \"## Linters\"")

def allow(check, obj, summary):
    for row in allowed:
        if (row["linter"] == "kube-score" and row["check"] == check
                and fnmatch.fnmatchcase(obj, row["objects"])
                and (row["finding"] == "*" or row["finding"] in summary)):
            row["used"] += 1
            return True
    return False

table, refused = [], []
for name in inputs:
    objects = json.load(open(f"{work}/{name}.json", encoding="utf-8"))
    checks = accepted = permitted = 0
    for o in objects:
        obj = f'{o["type_meta"]["kind"]}/{o["object_meta"]["name"]}'
        for c in o["checks"]:
            if c["skipped"]:
                continue
            checks += 1
            if c["grade"] >= 10:
                accepted += 1
                continue
            comments = c["comments"] or [{"path": "", "summary": "(no comment)"}]
            ok = True
            for comment in comments:
                summary = comment["summary"]
                if not allow(c["check"]["id"], obj, summary):
                    ok = False
                    where = f' ({comment["path"]})' if comment["path"] else ""
                    refused.append(f'{name}: kube-score {c["check"]["id"]} on {obj}{where}: {summary}')
            if ok:
                permitted += 1
    table.append((f"kube-score", name, len(objects), checks, accepted, permitted, checks - accepted - permitted))

head = ("linter", "input", "objects", "checks", "accepted", "allowed", "refused")
rows = [head] + [tuple(str(x) for x in r) for r in table]
widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
for r in rows:
    print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
unused = [r for r in allowed if r["used"] == 0]
for r in unused:
    print(f'note: allow-list row never used: {r["linter"]} {r["check"]} {r["objects"]} "{r["finding"]}"')
if refused:
    print("\nfindings not allowed by docs/operations.md, section Linters:", file=sys.stderr)
    for f in refused:
        print("  " + f, file=sys.stderr)
    sys.exit(1)
print("no finding outside the allow-list")
PY
