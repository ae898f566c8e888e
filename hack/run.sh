#!/usr/bin/env bash
# Runs the operator end to end.
#
# On the local cluster (no KUBECONFIG set; started here when not running)
# with its real nodes: builds the images, loads them into the real nodes,
# installs the operator with `helm install` of the chart with its defaults
# (two replicas, leader election, webhooks through the chart's Service,
# self-managed certificates) on the real nodes, signs the example Capsule
# over the agent image it built, applies examples/ in one go as GitOps would,
# and waits for the story: the summarizer serving on real pods, the drill
# failing it over and back, the project's agents computing the brief.
#
# Against another cluster (KUBECONFIG set), or without real nodes
# (SOMASTACK_REAL_NODES=0): the operator runs on this machine instead.
#
# KUBECONFIG=.local/kubeconfig (the local cluster's) counts as no KUBECONFIG.
#
#   hack/run.sh            run, show, then follow the operator's logs (Ctrl-C
#                          stops following; the operator keeps running)
#   hack/run.sh --check    same, and assert what a user would see, then stop
#                          (hack/test.sh and CI run this; needs real nodes)
#   hack/run.sh --install  only the cluster, the images and the operator in
#                          its pods, then stop (docs/getting-started.md)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

check=false install_only=false
[[ "${1:-}" == "--check" ]] && check=true
[[ "${1:-}" == "--install" ]] && install_only=true

log "building the operator"
cargo build --quiet --locked -p somastack-operator
"$ROOT/hack/build-tools.sh"

local_cluster=false
if [[ -z "${KUBECONFIG:-}" || "$KUBECONFIG" == "$LOCAL_KUBECONFIG" ]]; then
  local_cluster=true
  "$ROOT/hack/cluster-up.sh"
  export KUBECONFIG="$LOCAL_KUBECONFIG"
else
  log "using the cluster of KUBECONFIG=$KUBECONFIG"
  kubectl apply --server-side --force-conflicts --field-manager=somastack-hack -f charts/somastack-operator/crds/ >/dev/null
  kubectl wait --for=condition=Established -f charts/somastack-operator/crds/ --timeout=60s >/dev/null
  kubectl api-resources --cached=false >/dev/null
fi
in_cluster=false
$local_cluster && real_nodes_enabled && in_cluster=true
$install_only && ! $in_cluster &&
  die "hack/run.sh --install puts the operator on the local cluster's real nodes: no KUBECONFIG, as root, SOMASTACK_REAL_NODES unset"
$check && ! $in_cluster &&
  die "hack/run.sh --check asserts the story on real pods: it needs the local cluster (no KUBECONFIG) with its real nodes (as root, SOMASTACK_REAL_NODES unset)"
mkdir -p "$LOCAL_DIR"

# Applies every example file as its actor, from folder $1 (one field manager
# per file: each file is one actor's intent, so the reviewer's approval in
# 25-capsule-review.yaml must not take the publisher's spec away; applied as
# the user its "# kubectl-as: USER GROUP" line names, since the webhook
# refuses a review by the capsule's submitter).
apply_examples() {
  local f as_user as_group
  for f in "$1"/*.yaml; do
    read -r as_user as_group < <(sed -n 's/^# kubectl-as: //p' "$f"; echo)
    kubectl apply --server-side --field-manager="example-$(basename "$f" .yaml)" \
      ${as_user:+--as="$as_user"} ${as_group:+--as-group="$as_group"} -f "$f" >&2
  done
}

if ! $in_cluster; then
  if $local_cluster; then
    # The chart (RBAC, webhook configurations) with the operator on this
    # machine, running as the chart's ServiceAccount.
    log "installing the chart for a local operator (release $OPERATOR_RELEASE in $OPERATOR_NAMESPACE)"
    install_local_release
    operator_args=("${LOCAL_OPERATOR_ARGS[@]}")
    log "no real nodes (SOMASTACK_REAL_NODES=0): the example's pods are placed on real nodes and stay Pending"
  else
    # Another cluster's API server cannot call a webhook on this machine.
    operator_args=(run --no-webhook --metrics-addr "127.0.0.1:$METRICS_PORT")
  fi
  log "starting the operator on this machine (logs: .local/operator.log)"
  "$TARGET_DIR/debug/somastack-operator" "${operator_args[@]}" >"$LOCAL_DIR/operator.log" 2>&1 &
  operator=$!
  trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null' EXIT
  wait_operator_ready $operator "$LOCAL_DIR/operator.log"
  log "applying the examples"
  apply_examples examples
  kubectl get somastack -A >&2
  log "operator running (pid $operator); Ctrl-C stops it. In another shell: export KUBECONFIG=$KUBECONFIG"
  wait $operator
  exit
fi

log "the images (hack/build-image.sh), into the real nodes"
"$ROOT/hack/build-image.sh"
"$ROOT/hack/real-nodes.sh" load
operator_image=$(image_ref somastack-operator)
agent_image=$(image_ref somastack-agent)
[[ -n "$operator_image" && -n "$agent_image" ]] || die "hack/build-image.sh left no images in target/image"

log "helm install: the operator in pods on the real nodes ($operator_image)"
helm upgrade --install "$OPERATOR_RELEASE" "$ROOT/charts/somastack-operator" \
  --namespace "$OPERATOR_NAMESPACE" --create-namespace \
  --set image.repository="${operator_image%@*}" --set image.digest="${operator_image#*@}" \
  --set-string 'nodeSelector.somastack\.io/real-node=true' \
  --set-json 'tolerations=[{"key":"node.somastack.io/real","operator":"Exists","effect":"NoSchedule"}]' \
  --wait --timeout 180s >/dev/null || {
  kubectl -n "$OPERATOR_NAMESPACE" get pods -o wide >&2
  # Why: the scheduler's and kubelets' events (a Pending pod says why here,
  # unless no scheduler runs), and the nodes with their taints.
  kubectl -n "$OPERATOR_NAMESPACE" get events --sort-by=.lastTimestamp >&2 || true
  kubectl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,TAINTS:.spec.taints[*].key' >&2 || true
  kubectl get leases -n kube-system >&2 || true
  kubectl -n "$OPERATOR_NAMESPACE" logs -l app.kubernetes.io/component=operator --tail=20 >&2 || true
  die "the operator's pods did not become ready"
}
kubectl -n "$OPERATOR_NAMESPACE" get pods -o wide >&2
if $install_only; then
  log "the operator runs in the cluster (docs/getting-started.md goes on from here); export KUBECONFIG=$KUBECONFIG"
  exit 0
fi

# Each run tells the story from the start: the capsule is signed over this
# build's image, and a drill or project that already ran would not run again.
log "removing the examples of an earlier run"
kubectl delete -f examples/ --ignore-not-found --wait=true --timeout=180s >/dev/null

log "signing the example Capsule over $agent_image"
stamped="$LOCAL_DIR/examples"
rm -rf "$stamped"; mkdir -p "$stamped"
cp examples/*.yaml "$stamped/"
"$ROOT/hack/sign-capsule.sh" --image "$agent_image" examples/20-capsule.yaml \
  examples/keys/acme-agents-demo.key acme-agents-2026 >"$stamped/20-capsule.yaml"

log "applying the examples at once, as GitOps would"
apply_examples "$stamped"

ns=tenant-acme
log "waiting for the story: the summarizer Ready, the drill done, the project done"
kubectl -n $ns wait --for=condition=Ready installation/summarizer --timeout=180s >&2
kubectl -n $ns wait --for=jsonpath='{.status.phase}'=Succeeded drdrill/summarizer-region-outage --timeout=600s >&2 || true
kubectl -n $ns wait --for=condition=Succeeded kamachiqproject/market-brief --timeout=300s >&2 || true
kubectl get somastack -A >&2

if ! $check; then
  log "the operator runs in the cluster; its logs follow (Ctrl-C stops following, not the operator)."
  log "In another shell: export KUBECONFIG=$KUBECONFIG"
  exec kubectl -n "$OPERATOR_NAMESPACE" logs -f -l app.kubernetes.io/component=operator --max-log-requests 4 --tail=5
fi

log "checking what a user sees"
python3 "$ROOT/hack/check-story.py" "$ns" "$OPERATOR_NAMESPACE" "$OPERATOR_RELEASE" ||
  die "the end-to-end check failed"
log "end-to-end check passed"

# The in-cluster operator survives its leader's death: the leader pod's
# process is SIGKILLed on its real node (no graceful release of the Lease)
# and its pod removed, and the other replica must hold the Lease within 15 s
# (lease 10 s, retry 2 s). Found through /proc: the process whose POD_NAME
# is the holder.
lease=$(helm get values "$OPERATOR_RELEASE" -n "$OPERATOR_NAMESPACE" -a -o json |
  python3 -c 'import json,sys; v=json.load(sys.stdin); print((v.get("leaderElection") or {}).get("leaseName") or "")')
# The chart's default: its full name, the release's here.
[[ -n "$lease" ]] || lease=$OPERATOR_RELEASE
holder=$(kubectl -n "$OPERATOR_NAMESPACE" get lease "$lease" -o jsonpath='{.spec.holderIdentity}')
[[ -n "$holder" ]] || die "no operator replica holds Lease $lease"
leader_pid=""
for pid in $(pgrep -x somastack-opera || true); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "POD_NAME=$holder"; then leader_pid=$pid; fi
done
[[ -n "$leader_pid" ]] || die "the leader pod $holder has no process on this machine's real nodes"
log "SIGKILL of the leader pod's process ($holder, host pid $leader_pid), and its pod removed"
t0=$(date +%s.%N)
kill -KILL "$leader_pid"
# Otherwise the kubelet restarts the container in the same pod, whose
# identity (the pod's name) still holds the Lease and simply renews it: the
# pod is gone for good, as on a node that died, so the follower must take over.
kubectl -n "$OPERATOR_NAMESPACE" delete pod "$holder" --grace-period=0 --force --wait=false >/dev/null 2>&1
new=""
for _ in $(seq 1 300); do
  new=$(kubectl -n "$OPERATOR_NAMESPACE" get lease "$lease" -o jsonpath='{.spec.holderIdentity}' --request-timeout=2s 2>/dev/null || true)
  [[ -n "$new" && "$new" != "$holder" ]] && break
  sleep 0.1
done
failover=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
[[ -n "$new" && "$new" != "$holder" ]] || die "no other replica took Lease $lease within 30 s of the leader's SIGKILL"
log "the other replica ($new) holds the Lease ${failover}s after the leader pod's SIGKILL"
awk -v t="$failover" 'BEGIN { exit !(t <= 15) }' || die "failover took ${failover}s (target: at most 15 s)"
# The pod that replaces it (the killed one is gone from the API at once).
kubectl -n "$OPERATOR_NAMESPACE" wait pod -l app.kubernetes.io/component=operator --for=condition=Ready --timeout=120s >&2 ||
  die "the killed replica's replacement did not become ready"
log "in-cluster failover passed"
