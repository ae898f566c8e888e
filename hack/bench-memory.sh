#!/usr/bin/env bash
# Measures the operator's resident memory while Installations come and go,
# on the real local control plane (kwok nodes), and prints a table.
#
#   hack/bench-memory.sh [--binary PATH] [--count N] [--rounds R] [--settle S] [--wait W]
#
# Each round creates N Installations (in 10 namespaces, one Capsule without
# ports, so no Service: this measures the operator's own memory), waits
# until the operator has given every one a status, deletes them all, waits
# until its caches are empty again and then S more seconds (W: the longest
# wait for the statuses; the table says how many had one), sampling the
# operator's RSS (VmRSS) and peak (VmHWM) from /proc. Memory that is not
# returned shows as an "after delete" figure that grows round after round.
# The operator is a release build of this checkout (or --binary), started
# here exactly as hack/test.sh starts the suite's (chart RBAC, webhooks on);
# stop any other local operator first.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

binary="" count=500 rounds=3 settle=120 wait=600
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --count) count="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --settle) settle="$2"; shift 2 ;;
    --wait) wait="$2"; shift 2 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done

"$ROOT/hack/cluster-up.sh" >/dev/null
export KUBECONFIG="$LOCAL_KUBECONFIG"
if [[ -z "$binary" ]]; then
  log "building the operator (release)"
  cargo build --release --locked --quiet -p somastack-operator
  binary="$ROOT/target/release/somastack-operator"
fi
curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 &&
  die "an operator already serves 127.0.0.1:$METRICS_PORT; stop it first"
install_local_release

logfile="$LOCAL_DIR/operator-bench-memory.log"
RUST_LOG=warn "$binary" "${LOCAL_OPERATOR_ARGS[@]}" >"$logfile" 2>&1 &
operator=$!
trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null' EXIT
wait_operator_ready $operator "$logfile"

mib() { awk -v k="$1:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$operator/status"; }
# Live heap as the operator's allocator counts it (somastack_heap_allocated_bytes;
# "-" for a build without it).
heap() {
  curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
    awk '$1 == "somastack_heap_allocated_bytes" { printf "%.1f", $2 / 1048576; found = 1 } END { if (!found) print "-" }'
}
rows=()
sample() {
  rows+=("$(printf '%-30s %8s %9s %9s %8s' "$1" "$(mib VmRSS)" "$(mib VmHWM)" "$(heap)" "$2")")
  log "$1: RSS $(mib VmRSS) MiB, heap $(heap) MiB"
}
installations() { kubectl get installations -A --no-headers 2>/dev/null | wc -l; }
with_status() {
  kubectl get installations -A -o jsonpath='{range .items[*]}{.status.observedGeneration}{"\n"}{end}' 2>/dev/null |
    grep -c . || true
}

sleep 10
sample "started" 0
package="bench-mem"
for round in $(seq 1 "$rounds"); do
  log "round $round: creating $count Installations"
  {
    cat <<EOF
apiVersion: somastack.io/v1alpha1
kind: Capsule
metadata: { name: $package-r$round }
spec:
  package: $package-r$round
  version: 1.0.0
  publisher: bench
  image: registry.bench.example/agents/mem@sha256:$(printf 'r%s' "$round" | sha256sum | cut -c1-64)
  dataClassification: public
EOF
    for ns in $(seq 0 9); do
      printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata: { name: bench-mem-%s, labels: { somastack.io/test: "true" } }\n' "$ns"
    done
    for i in $(seq 1 "$count"); do
      printf -- '---\napiVersion: somastack.io/v1alpha1\nkind: Installation\nmetadata: { name: app-%s, namespace: bench-mem-%s }\nspec: { capsule: { package: %s, version: 1.0.0 }, region: eu-west-1, replicas: 1, config: { GREETING: "hello %s" } }\n' \
        "$i" "$((i % 10))" "$package-r$round" "$i"
    done
  } | kubectl apply --server-side --field-manager=bench -f - >/dev/null
  started=$(date +%s)
  until (($(with_status) >= count)) || (($(date +%s) - started > wait)); do sleep 5; done
  sample "round $round: $(with_status) with status" "$(installations)"
  log "round $round: deleting them"
  kubectl delete namespace $(seq -f 'bench-mem-%g' 0 9) --wait=true >/dev/null
  kubectl delete capsule "$package-r$round" --wait=true >/dev/null
  until (($(installations) == 0)); do sleep 5; done
  sleep "$settle"
  sample "round $round: deleted, +${settle}s" "$(installations)"
done

printf '\n%-30s %8s %9s %9s %8s\n' "operator ($(basename "$binary"))" "RSS MiB" "peak MiB" "heap MiB" "objects"
printf '%s\n' "${rows[@]}"
printf '\n(hack/bench-memory.sh --count %s --rounds %s --settle %s --wait %s; %s)\n' "$count" "$rounds" "$settle" "$wait" "$("$binary" --version 2>/dev/null || echo "$binary")"
