#!/usr/bin/env bash
# Prints the watches one extra operator opens on the local cluster, by
# resource, from the API server's own apiserver_longrunning_requests gauge
# (verb WATCH), read before it starts and once its caches are filled. Drills
# and projects are sharded away from it, so it acts on none.
#
#   hack/count-watches.sh [OPERATOR_BINARY]   default: this tree's debug build
#
# Needs the local cluster (hack/cluster-up.sh); tests/tests/watches.rs
# asserts the same figure (one per resource).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
bin="${1:-$TARGET_DIR/debug/somastack-operator}"
[[ -x "$bin" ]] || die "no operator binary at $bin (cargo build first)"
port=18099

snapshot() {
  kubectl_local get --raw /metrics | awk -F'[{}]' '
    /^apiserver_longrunning_requests\{/ && /verb="WATCH"/ {
      match($2, /resource="[^"]*"/); r = substr($2, RSTART + 10, RLENGTH - 11)
      split($3, v, " "); c[r] += v[1]
    }
    END { for (r in c) print r, c[r] }' | sort
}

before=$(mktemp) after=$(mktemp) log=$(mktemp)
trap 'rm -f "$before" "$after" "$log"' EXIT
snapshot >"$before"
"$bin" run --kubeconfig "$LOCAL_KUBECONFIG" --no-webhook --metrics-addr "127.0.0.1:$port" \
  --drill-selector somastack.io/drill-shard=none \
  --project-selector somastack.io/project-shard=none >"$log" 2>&1 &
pid=$!
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 1
done
# The controllers subscribe once the caches are filled.
sleep 10
snapshot >"$after"
kill "$pid"; wait "$pid" 2>/dev/null || true
printf '%-20s %s\n' resource watches
join -a1 -a2 -e0 -o 0,1.2,2.2 "$before" "$after" | awk '$3 != $2 { printf "%-20s %d\n", $1, $3 - $2; n += $3 - $2 } END { printf "%-20s %d\n", "total", n }'
