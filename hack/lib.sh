# shellcheck shell=bash disable=SC2034 # its settings are used by the scripts that source it
# Shared settings for the hack/ scripts. Source it; do not run it.
#
# Every pinned version of a tool the project builds lives here, so a bump is a
# one-line change and the cache key follows it.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

K8S_VERSION="${K8S_VERSION:-v1.37.2}"   # kube-apiserver, -controller-manager, -scheduler, kubectl
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"  # real nodes only
# Checkers the tests run (hack/build-checkers.sh): promtool from the
# Prometheus module (v0.316.0 is Prometheus 3.16.0).
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"

# Binaries are cached outside the repository, keyed by version, so a fresh
# clone on the same machine (and CI after a developer session) reuses them.
CACHE_DIR="${SOMASTACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/somastack}"
BIN_DIR="$CACHE_DIR/bin"
K8S_BIN="$BIN_DIR/kubernetes-$K8S_VERSION"
ETCD_BIN="$BIN_DIR/etcd-$ETCD_VERSION"
KWOK_BIN="$BIN_DIR/kwok-$KWOK_VERSION"
HELM_BIN="$BIN_DIR/helm-$HELM_VERSION"
K8S_NODE_BIN="$BIN_DIR/kubernetes-node-$K8S_VERSION"
CONTAINERD_BIN="$BIN_DIR/containerd-$CONTAINERD_VERSION"
PROMTOOL_BIN="$BIN_DIR/promtool-$PROMETHEUS_VERSION"
# hack/verdicts is the project's own Go program: cached by the hash of its
# source, so a change rebuilds it and a fresh clone of the same source does not.
VERDICTS_BIN="$BIN_DIR/verdicts-$(cat "$ROOT"/hack/verdicts/{go.mod,go.sum,main.go} 2>/dev/null | sha256sum | cut -c1-12)"

# Real nodes (kubelet + containerd + runc + CNI) beside the kwok ones:
# hack/real-nodes.sh, docs/real-nodes.md. On by default (they need root);
# SOMASTACK_REAL_NODES=0 leaves only the kwok nodes.
real_nodes_enabled() { [[ "${SOMASTACK_REAL_NODES:-1}" != 0 ]]; }

# Where cargo builds (CI keeps it in the cache, outside the clone).
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

# The project's images are tagged with the workspace version.
IMAGE_VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")

# The digest-pinned reference of a project image built by
# hack/build-image.sh: localhost/<name>@sha256:<manifest digest>, the name
# hack/real-nodes.sh load gives it in each real node. Empty when not built.
image_ref() {
  local archive="$ROOT/target/image/$1.oci.tar" digest
  [[ -f "$archive" ]] || return 0
  digest=$(tar -xOf "$archive" index.json | grep -o '"digest":"sha256:[0-9a-f]\{64\}"' | head -1 | cut -d'"' -f4)
  [[ -n "$digest" ]] && echo "localhost/$1@$digest"
}

# The local cluster's Service range (kube-apiserver --service-cluster-ip-range):
# 8,190 ClusterIPs, room for hack/bench (the default 10.0.0.0/24 ran out at
# about 250 Services). It starts where the default did, so the `kubernetes`
# Service keeps 10.0.0.1 (the address the real nodes' pods use and the API
# server's certificate names), and stays clear of the real nodes' pod network
# 10.213.0.0/16. hack/real-nodes.sh routes it to the pod bridge.
SERVICE_CIDR=10.0.0.0/19

# The local cluster's state lives in the repo's ignored .local/ folder.
CLUSTER_NAME="${SOMASTACK_CLUSTER:-somastack}"
LOCAL_DIR="$ROOT/.local"
KWOK_WORKDIR="$LOCAL_DIR/kwok"
LOCAL_KUBECONFIG="$LOCAL_DIR/kubeconfig"

export PATH="$K8S_BIN:$ETCD_BIN:$KWOK_BIN:$HELM_BIN:$PATH"

_t0=$(date +%s)
log() { printf '[%s +%ss] %s\n' "$(basename "$0")" "$(( $(date +%s) - _t0 ))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run a long command while printing a heartbeat every 30 s, so nobody stares
# at a silent terminal during a cold build.
with_heartbeat() {
  local what="$1"; shift
  local start last now
  start=$(date +%s); last=$start
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    now=$(date +%s)
    if (( now - last >= 30 )) && kill -0 "$pid" 2>/dev/null; then
      log "... still $what ($(( now - start ))s so far)"
      last=$now
    fi
  done
  wait "$pid"
}

# install_into DIR STEP DESCRIPTION FUNCTION: runs FUNCTION DIR.tmp and renames
# DIR.tmp to DIR on success, so an interrupted build never leaves a half-filled
# cache entry; a DIR already complete is kept. STEP counts against the
# caller's steps_total (hack/build-tools.sh, hack/build-checkers.sh).
install_into() {
  local dir="$1" step="$2" what="$3" fn="$4"
  if [[ -f "$dir/.complete" ]]; then
    log "[$step/${steps_total:-?}] $what: cached in $dir"
    return
  fi
  log "[$step/${steps_total:-?}] $what: building (cold builds take minutes; cached afterwards)"
  local start; start=$(date +%s)
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  with_heartbeat "building $what" "$fn" "$dir.tmp"
  touch "$dir.tmp/.complete"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
  log "[$step/${steps_total:-?}] $what: built in $(( $(date +%s) - start ))s"
}

# Loopback ports of the local cluster (override SOMASTACK_PORT_BASE to run two).
PORT_BASE="${SOMASTACK_PORT_BASE:-36400}"
APISERVER_PORT=$((PORT_BASE + 43))
ETCD_PORT=$((PORT_BASE + 79))
ETCD_PEER_PORT=$((PORT_BASE + 80))
KWOK_PORT=$((PORT_BASE + 47))
KCM_PORT=$((PORT_BASE + 57))
SCHEDULER_PORT=$((PORT_BASE + 59))

# The operator on this machine: the chart's release (for its RBAC, webhook
# configurations and namespace) and the operator's own listeners.
OPERATOR_NAMESPACE="somastack-system"
OPERATOR_RELEASE="somastack-operator"
# Below the kernel's ephemeral range (32768 and up), so that no outgoing
# connection of the cluster can already hold them when the operator starts.
METRICS_PORT=$((PORT_BASE - 20000 + 90))
WEBHOOK_PORT=$((PORT_BASE - 20000 + 91))
OPERATOR_KUBECONFIG="$LOCAL_DIR/operator.kubeconfig"

kubectl_local() { kubectl --kubeconfig "$LOCAL_KUBECONFIG" "$@"; }

# True when the local cluster's API server answers /readyz.
cluster_running() {
  [[ -f "$LOCAL_KUBECONFIG" ]] && kubectl_local get --raw /readyz --request-timeout=3s >/dev/null 2>&1
}

# Installs the chart for an operator that runs on this machine rather than in
# a pod: no replicas, webhook configurations that call 127.0.0.1, and a
# kubeconfig holding a token of the chart's ServiceAccount, so the local
# operator has exactly the chart's RBAC, no more.
install_local_release() {
  helm upgrade --install "$OPERATOR_RELEASE" "$ROOT/charts/somastack-operator" \
    --namespace "$OPERATOR_NAMESPACE" --create-namespace --wait=hookOnly \
    --set replicaCount=0 --set "webhook.url=https://127.0.0.1:$WEBHOOK_PORT" >/dev/null
  local token server ca
  token=$(kubectl -n "$OPERATOR_NAMESPACE" create token "$OPERATOR_RELEASE" --duration=24h)
  server=$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  (
    umask 077
    cat >"$OPERATOR_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: somastack-operator, user: {token: "$token"}}]
contexts: [{name: somastack-operator, context: {cluster: local, user: somastack-operator}}]
current-context: somastack-operator
EOF
  )
}

# Arguments of `somastack-operator run` for the operator on this machine.
LOCAL_OPERATOR_ARGS=(run --kubeconfig "$OPERATOR_KUBECONFIG" --namespace "$OPERATOR_NAMESPACE"
  --metrics-addr "127.0.0.1:$METRICS_PORT" --webhook-addr "127.0.0.1:$WEBHOOK_PORT" --webhook-san 127.0.0.1
  # DrDrills labelled somastack.io/drill-shard belong to an operator a test
  # starts (and kills) itself.
  --drill-selector '!somastack.io/drill-shard'
  # Likewise KamachiqProjects labelled somastack.io/project-shard.
  --project-selector '!somastack.io/project-shard')

# Waits until the operator (pid $1, log $2) answers /readyz: caches synced
# and, with webhooks, its certificate loaded and the CA bundle in place.
wait_operator_ready() {
  local pid=$1 logfile=$2
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$METRICS_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logfile" >&2; die "the operator exited"; }
    sleep 0.5
  done
  tail -20 "$logfile" >&2
  die "the operator did not become ready within 60s"
}
