#!/usr/bin/env bash
# Runs the operator end to end: builds it, starts the local cluster when no
# kubeconfig is given, installs the CRDs, starts the operator, applies the
# examples and shows them. The operator then keeps running until Ctrl-C.
#
#   hack/run.sh            against $KUBECONFIG, or the local cluster when unset
#   hack/run.sh --check    same, but stop once the operator has reported on
#                          every example (used by hack/test.sh and CI)
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

check=false
[[ "${1:-}" == "--check" ]] && check=true

log "building the operator"
cargo build --quiet --locked -p somastack-operator
"$ROOT/hack/build-tools.sh"

if [[ -z "${KUBECONFIG:-}" ]]; then
  "$ROOT/hack/cluster-up.sh"
  export KUBECONFIG="$LOCAL_KUBECONFIG"
else
  log "using the cluster of KUBECONFIG=$KUBECONFIG"
  kubectl apply --server-side --force-conflicts --field-manager=somastack-hack -f charts/somastack-operator/crds/ >/dev/null
  kubectl wait --for=condition=Established -f charts/somastack-operator/crds/ --timeout=60s >/dev/null
  kubectl api-resources --cached=false >/dev/null
fi

mkdir -p "$LOCAL_DIR"
if [[ "$KUBECONFIG" == "$LOCAL_KUBECONFIG" ]]; then
  # The chart (RBAC, webhook configurations) with the operator on this
  # machine, running as the chart's ServiceAccount.
  log "installing the chart for a local operator (release $OPERATOR_RELEASE in $OPERATOR_NAMESPACE)"
  install_local_release
  operator_args=("${LOCAL_OPERATOR_ARGS[@]}")
else
  # Another cluster's API server cannot call a webhook on this machine.
  operator_args=(run --no-webhook --metrics-addr "127.0.0.1:$METRICS_PORT")
fi
log "starting the operator (logs: .local/operator.log)"
target/debug/somastack-operator "${operator_args[@]}" >"$LOCAL_DIR/operator.log" 2>&1 &
operator=$!
trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null' EXIT
wait_operator_ready $operator "$LOCAL_DIR/operator.log"

log "applying the examples"
# One field manager per file: each file is one actor's intent (the reviewer's
# approval in 25-capsule-review.yaml must not take the publisher's spec away),
# applied as the user its "# kubectl-as: USER GROUP" line names (the webhook
# refuses a review by the capsule's submitter).
for f in examples/*.yaml; do
  read -r as_user as_group < <(sed -n 's/^# kubectl-as: //p' "$f"; echo)
  kubectl apply --server-side --field-manager="example-$(basename "$f" .yaml)" \
    ${as_user:+--as="$as_user"} ${as_group:+--as-group="$as_group"} -f "$f" >&2
done

log "waiting for the operator to report on every example"
for f in examples/*.yaml; do
  grep -q '^apiVersion: somastack.io/' "$f" || continue
  seen="" gen="x"
  for _ in $(seq 1 60); do
    read -r gen seen < <(kubectl get -f "$f" -o jsonpath='{.metadata.generation} {.status.observedGeneration}{"\n"}')
    [[ -n "$seen" && "$seen" == "$gen" ]] && break
    kill -0 $operator 2>/dev/null || { tail -20 "$LOCAL_DIR/operator.log" >&2; die "the operator exited"; }
    sleep 1
  done
  [[ "$seen" == "$gen" ]] || die "$f: the operator did not report on generation $gen"
done
kubectl wait --for=condition=Ready -f examples/30-installation.yaml --timeout=120s >&2
kubectl get somastack -A >&2

if $check; then
  kill -TERM $operator; wait $operator || die "the operator did not exit cleanly on SIGTERM"
  trap - EXIT
  log "end-to-end check passed"
else
  log "operator running (pid $operator); Ctrl-C stops it. In another shell: export KUBECONFIG=$KUBECONFIG"
  wait $operator
fi
