# shellcheck shell=bash disable=SC2154,SC2034 # WORK, KUBEPY, PACKAGE, ... are hack/bench's; it reads drill_table, drill_doc
# The drill part of hack/bench (--parts drill): sourced by it, functions only;
# they use hack/bench's helpers (start_operator, now, secs, phase, ...).
#
# --drill-runs K runs of each, one at a time, on Installations of the bench's
# Capsule with 2 replicas (pods Ready as soon as kwok runs them):
#  drill     scope Installation: a fresh Installation per run (namespace
#            bench-drill-op-<i>, home eu-west-1, failoverRegions
#            [eu-central-1]) and a DrDrill RegionOutage on it; waited for
#            until it has restored and reported (kube.py until); its RTO is
#            status.measuredRtoSeconds: from the injection (written first,
#            microseconds) to when the operator saw 2 new pods Ready in the
#            failover region (docs/drills.md, "How RTO is measured"). Also
#            timed: apply to verdict (validate, inject, fail over, verify,
#            restore, report).
#  hand      the same failover by hand with kubectl, through the operator:
#            on a fresh Installation per run (bench-drill-hand-<i>), what the
#            drill's steps do, in sequence: `kubectl annotate installation
#            somastack.io/unavailable-regions=eu-west-1` (the outage),
#            `kubectl wait --for=delete` of its pods (the drill's Inject waits
#            for that too), `kubectl annotate installation
#            somastack.io/active-region=eu-central-1` (the failover).
#  kubectl   the same by hand without the operator (stopped): the
#            Installation's children (dumped from bench-drill-hand-0 before
#            any run, as the Installation part's floor) applied to
#            bench-drill-kubectl-<i>; `kubectl patch` of the Deployment as the
#            operator renders the outage (strategy Recreate, node affinity
#            region NotIn eu-west-1), `kubectl wait --for=delete` of its pods,
#            `kubectl patch` as it renders the failover (region In
#            eu-central-1, RollingUpdate).
#  region    scope Region (every node of the region tainted NoExecute,
#            Kubernetes' taint manager evicts the pods): one Installation
#            (bench-drill-region, home ap-south-1, which nothing else uses,
#            failover eu-central-1), K drills one after the other (each
#            restores); by hand on bench-drill-region-hand: `kubectl taint
#            nodes -l topology.kubernetes.io/region=ap-south-1 ...:NoExecute`,
#            wait for the pods to go, annotate active-region; then, untimed,
#            untaint and move it home again.
# A run by hand is timed from just before its first kubectl command to the
# watch event (kube.py pods-ready) that shows 2 pods Ready on nodes of the
# failover region: the drill's definition of recovered, seen by a watch
# instead of the operator; each kubectl is a process of its own, as in a
# person's script.

DRILL_HOME=eu-west-1
DRILL_FAILOVER=eu-central-1
DRILL_REGION_HOME=ap-south-1
DRILL_REPLICAS=2
DRILL_SELECTOR=somastack.io/installation=app
declare -a D_RTO=() D_WALL=() D_HAND=() D_KUBECTL=() D_VERDICT=() R_RTO=() R_WALL=() R_HAND=() R_VERDICT=()

drill_installation() { # namespace home
  printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: { name: %s, labels: { somastack.io/bench: "true" } }\n' "$1"
  printf -- '---\napiVersion: somastack.io/v1alpha1\nkind: Installation\nmetadata: { name: app, namespace: %s }\nspec: { capsule: { package: %s, version: 1.0.0 }, region: %s, failoverRegions: [%s], replicas: %d }\n' \
    "$1" "$PACKAGE" "$2" "$DRILL_FAILOVER" "$DRILL_REPLICAS"
}

# Starts kube.py pods-ready on namespace $1, region $2 (the caller waits for
# $watcher); returns once it has listed. Output in $WORK/ready-$1.
drill_watch_ready() {
  rm -f "$WORK/ready-$1.started"
  python3 "$KUBEPY" pods-ready "$WORK/admin.json" --namespace "$1" --selector "$DRILL_SELECTOR" --region "$2" \
    --count "$DRILL_REPLICAS" --timeout 600 --started "$WORK/ready-$1.started" >"$WORK/ready-$1" &
  watcher=$!
  for _ in $(seq 1 600); do [[ -f "$WORK/ready-$1.started" ]] && return 0; sleep 0.1; done
  die "the pod watcher of $1 did not list within 60s"
}
# Waits for it; sets ready_at to the time it printed.
drill_wait_ready() {
  wait "$watcher" || die "$1: not $DRILL_REPLICAS pods Ready in time"
  watcher=""
  ready_at=$(cat "$WORK/ready-$1")
}

# A drill of scope $2 on the Installation app of namespace $1, named $3;
# appends the RTO, the wall time and the verdict to the arrays named $4 $5 $6.
drill_run() {
  local ns=$1 scope=$2 name=$3 t0 t1 out="$WORK/drill-$1-$3"
  local -n rto_=$4 wall_=$5 verdict_=$6
  rm -f "$out.started"
  python3 "$KUBEPY" until "$WORK/admin.json" --path "/apis/somastack.io/v1alpha1/namespaces/$ns/drdrills" \
    --name "$name" --timeout 900 --out "$out.json" --started "$out.started" \
    --expr '(o.get("status") or {}).get("run") is None and o["status"].get("phase") in ("Succeeded", "Failed") and bool(o["status"].get("history"))' \
    >"$out.done" &
  watcher=$!
  for _ in $(seq 1 600); do [[ -f "$out.started" ]] && break; sleep 0.1; done
  t0=$(now)
  cat <<EOF | kubectl apply --server-side --field-manager=bench -f - >/dev/null
apiVersion: somastack.io/v1alpha1
kind: DrDrill
metadata: { name: $name, namespace: $ns }
spec:
  installationRef: { name: app }
  scenario: RegionOutage
  scope: $scope
  failoverRegion: $DRILL_FAILOVER
  objectives: { rtoSeconds: 120 }
  timeoutSeconds: 600
EOF
  wait "$watcher" || die "the drill $ns/$name did not finish within 900s"
  watcher=""
  t1=$(cat "$out.done")
  rto_+=("$(jq_ '"%.1f" % d["status"]["measuredRtoSeconds"] if d["status"].get("measuredRtoSeconds") is not None else "-"' <"$out.json")")
  wall_+=("$(secs "$t0" "$t1")")
  verdict_+=("$(jq_ 'd["status"].get("verdict", "-")' <"$out.json")")
  [[ "${verdict_[-1]}" == Pass ]] ||
    log "drill $ns/$name: verdict ${verdict_[-1]}: $(jq_ 'd["status"]["history"][0].get("message", "")' <"$out.json")"
  phase "drill $ns/$name ($scope): RTO ${rto_[-1]}s, verdict" "${wall_[-1]}"
}

# Pods of the workload in namespace $1, as kubectl names them (pod/...).
drill_pods() { kubectl get pods -n "$1" -l "$DRILL_SELECTOR" -o name; }

# By hand through the Installation of namespace $1: the outage by `annotate`
# (unavailable-regions) or `taint` (the nodes of region $2), then the
# failover. Appends the time to the array named $3.
drill_hand() {
  local ns=$1 target=$2 mode=$3 t0 old
  local -n out_=$4
  mapfile -t old < <(drill_pods "$ns")
  drill_watch_ready "$ns" "$DRILL_FAILOVER"
  t0=$(now)
  if [[ "$mode" == annotate ]]; then
    kubectl annotate installation app -n "$ns" "somastack.io/unavailable-regions=$target" --overwrite >/dev/null
  else
    drill_tainted=$target
    kubectl taint nodes -l "topology.kubernetes.io/region=$target" "somastack.io/bench-outage=$ns:NoExecute" --overwrite >/dev/null
  fi
  kubectl wait --for=delete -n "$ns" "${old[@]}" --timeout=300s >/dev/null
  kubectl annotate installation app -n "$ns" "somastack.io/active-region=$DRILL_FAILOVER" --overwrite >/dev/null
  drill_wait_ready "$ns"
  out_+=("$(secs "$t0" "$ready_at")")
  phase "by hand ($mode) $ns" "${out_[-1]}"
}

# Undoes a taint run by hand (untimed): untaint, home again, $DRILL_REPLICAS Ready there.
drill_hand_restore() {
  local ns=$1 home=$2
  drill_cleanup
  drill_watch_ready "$ns" "$home"
  kubectl annotate installation app -n "$ns" somastack.io/active-region- >/dev/null
  drill_wait_ready "$ns"
}

# By hand without the operator: the Deployment app of namespace $1.
drill_kubectl() {
  local ns=$1 t0 old aff=/spec/template/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions
  mapfile -t old < <(drill_pods "$ns")
  drill_watch_ready "$ns" "$DRILL_FAILOVER"
  t0=$(now)
  kubectl patch deployment app -n "$ns" --type=json -p "[
    {\"op\": \"replace\", \"path\": \"/spec/strategy\", \"value\": {\"type\": \"Recreate\"}},
    {\"op\": \"add\", \"path\": \"$aff/-\", \"value\": {\"key\": \"topology.kubernetes.io/region\", \"operator\": \"NotIn\", \"values\": [\"$DRILL_HOME\"]}}]" >/dev/null
  kubectl wait --for=delete -n "$ns" "${old[@]}" --timeout=300s >/dev/null
  kubectl patch deployment app -n "$ns" --type=json -p "[
    {\"op\": \"replace\", \"path\": \"$aff/0/values\", \"value\": [\"$DRILL_FAILOVER\"]},
    {\"op\": \"replace\", \"path\": \"/spec/strategy\", \"value\": {\"type\": \"RollingUpdate\", \"rollingUpdate\": {\"maxUnavailable\": 0, \"maxSurge\": 1}}}]" >/dev/null
  drill_wait_ready "$ns"
  D_KUBECTL+=("$(secs "$t0" "$ready_at")")
  phase "by hand (kubectl patch) $ns" "${D_KUBECTL[-1]}"
}

# Lifts the outage of a run by hand (hack/bench's EXIT trap calls it too).
drill_tainted=""
drill_cleanup() {
  [[ -n "$drill_tainted" ]] || return 0
  kubectl taint nodes -l "topology.kubernetes.io/region=$drill_tainted" somastack.io/bench-outage- >/dev/null 2>&1 || true
  drill_tainted=""
}

drill_delete() {
  local t0 names; t0=$(now)
  mapfile -t names < <(kubectl get namespaces -o name | sed -n "s|^namespace/\($1.*\)|\1|p")
  ((${#names[@]})) || return 0
  kubectl delete namespace --ignore-not-found --wait=true --timeout=600s "${names[@]}" >/dev/null
  phase "  delete $1*" "$(secs "$t0" "$(now)")"
}

drill_part() {
  local k=$1 i
  log "== drills: $k runs each of a RegionOutage drill and the same failover by hand"
  start_operator "$LOCAL_DIR/operator-bench-drill.log"
  drill_delete bench-drill- # left by an interrupted run
  {
    for ((i = 0; i < k; i++)); do
      drill_installation "bench-drill-op-$i" "$DRILL_HOME"
      drill_installation "bench-drill-hand-$i" "$DRILL_HOME"
    done
    drill_installation bench-drill-region "$DRILL_REGION_HOME"
    drill_installation bench-drill-region-hand "$DRILL_REGION_HOME"
  } >"$WORK/drill-installations.yaml"
  kubectl apply --server-side --field-manager=bench -f "$WORK/drill-installations.yaml" >/dev/null
  python3 "$KUBEPY" wait "$WORK/admin.json" --kind installations --ns-prefix bench-drill- --count $((2 * k + 2)) \
    --timeout 600 >/dev/null || die "the drills' Installations were not Ready within 600s"
  kubectl get serviceaccounts,configmaps,deployments,services,networkpolicies,poddisruptionbudgets,horizontalpodautoscalers,controllerrevisions \
    -n bench-drill-hand-0 -l app.kubernetes.io/managed-by=somastack-operator -o json >"$WORK/drill-children.json"

  for ((i = 0; i < k; i++)); do drill_run "bench-drill-op-$i" Installation outage D_RTO D_WALL D_VERDICT; done
  for ((i = 0; i < k; i++)); do drill_hand "bench-drill-hand-$i" "$DRILL_HOME" annotate D_HAND; done
  for ((i = 0; i < k; i++)); do
    drill_watch_ready bench-drill-region "$DRILL_REGION_HOME"
    drill_wait_ready bench-drill-region
    drill_run bench-drill-region Region "outage-$i" R_RTO R_WALL R_VERDICT
  done
  for ((i = 0; i < k; i++)); do
    drill_watch_ready bench-drill-region-hand "$DRILL_REGION_HOME"
    drill_wait_ready bench-drill-region-hand
    drill_hand bench-drill-region-hand "$DRILL_REGION_HOME" taint R_HAND
    drill_hand_restore bench-drill-region-hand "$DRILL_REGION_HOME"
  done
  drill_delete bench-drill-
  stop_operator

  log "== drills: the same failover on a plain Deployment with kubectl, no operator"
  for ((i = 0; i < k; i++)); do
    python3 "$KUBEPY" children --prefix bench-drill-hand-0 --to "bench-drill-kubectl-$i" \
      <"$WORK/drill-children.json" >"$WORK/drill-kubectl-$i.json"
    kubectl apply --server-side --field-manager=bench -f "$WORK/drill-kubectl-$i.json" >/dev/null
  done
  python3 "$KUBEPY" wait "$WORK/admin.json" --kind deployments --ns-prefix bench-drill-kubectl- --count "$k" \
    --timeout 600 >/dev/null || die "the plain Deployments were not Available within 600s"
  for ((i = 0; i < k; i++)); do drill_kubectl "bench-drill-kubectl-$i"; done
  drill_delete bench-drill-kubectl-
  drill_rows "$k"
}

# "| label | v1 | ... | median | min | max |" of the array named $2.
drill_row() {
  local -n v_=$2
  local line="| $1 |" s
  for x in "${v_[@]}"; do line+=" $x |"; done
  s=$(python3 "$KUBEPY" stats "${v_[@]}")
  line+=" $(jq_ '"%.1f | %.1f | %.1f" % (d["median"], d["min"], d["max"])' <<<"$s") |"
  echo "$line"
}
drill_median() { local -n m_=$1; python3 "$KUBEPY" stats "${m_[@]}" | jq_ 'd["median"]'; }

drill_rows() {
  local k=$1 header="| Drills, RegionOutage, $DRILL_REPLICAS replicas |" sep="|---|" i
  for ((i = 1; i <= k; i++)); do header+=" run $i |"; sep+="---|"; done
  header+=" median | min | max |"; sep+="---|---|---|"
  local verdicts="| drill verdicts, scope Installation / Region |"
  for ((i = 0; i < k; i++)); do verdicts+=" ${D_VERDICT[i]} / ${R_VERDICT[i]} |"; done
  verdicts+=" | | |"
  local r_kubectl r_hand
  r_kubectl=$(ratio "$(drill_median D_RTO)" "$(drill_median D_KUBECTL)")
  r_hand=$(ratio "$(drill_median D_RTO)" "$(drill_median D_HAND)")
  drill_table=$(
    echo "$header"; echo "$sep"
    drill_row "drill, scope Installation ($DRILL_HOME → $DRILL_FAILOVER): measured RTO (s)" D_RTO
    drill_row "by hand through the Installation: kubectl annotate the outage, wait, annotate the failover (s)" D_HAND
    drill_row "by hand without the operator: kubectl patch the Deployment, wait, patch (s)" D_KUBECTL
    drill_row "drill, scope Installation: apply to verdict, restored (s)" D_WALL
    drill_row "drill, scope Region ($DRILL_REGION_HOME → $DRILL_FAILOVER): measured RTO (s)" R_RTO
    drill_row "by hand: kubectl taint the region's nodes NoExecute, wait, annotate the failover (s)" R_HAND
    drill_row "drill, scope Region: apply to verdict, restored (s)" R_WALL
    echo "$verdicts"
  )
  drill_ratios="median drill RTO (scope Installation) / by hand through the Installation: $r_hand; / by hand without the operator: $r_kubectl"
  drill_doc=$(
    cat <<EOF
## Drills: RTO against the same failover by hand with kubectl

$k runs of each, one at a time, on Installations of the same Capsule with
$DRILL_REPLICAS replicas on kwok nodes (a pod is Ready as soon as kwok runs it,
so the figures are the control plane's and the operator's reaction, not an
application's start-up). A DrDrill \`RegionOutage\`, scope \`Installation\`, on
a fresh Installation per run (home $DRILL_HOME, failover $DRILL_FAILOVER): its
RTO is \`status.measuredRtoSeconds\`, from the injection to when the operator
saw $DRILL_REPLICAS new pods Ready in the failover region (docs/drills.md, How
RTO is measured). By hand: the drill's steps as kubectl commands in sequence
on a fresh Installation per run (\`kubectl annotate\` the outage,
\`somastack.io/unavailable-regions\`; \`kubectl wait --for=delete\` of the
pods, as the drill's Inject waits; \`kubectl annotate\` the failover,
\`somastack.io/active-region\`), and without the operator on a plain copy of
an Installation's children (\`kubectl patch\` of the Deployment as the
operator renders the outage, then the failover). A run by hand is timed from
just before its first kubectl to the watch event that shows $DRILL_REPLICAS
pods Ready on nodes of the failover region (\`hack/bench.d/kube.py
pods-ready\`): the drill's definition, seen by a watch; each kubectl is a
process of its own. Scope \`Region\` taints every node of $DRILL_REGION_HOME
NoExecute (Kubernetes' taint manager evicts the pods); by hand, \`kubectl
taint nodes\` and the failover annotation. The drill's "apply to verdict"
includes its validation, restore and report.

$drill_table

$drill_ratios.
EOF
  )
}
