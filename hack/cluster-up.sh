#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler (built by hack/build-tools.sh),
# with kwok standing in for kubelets, as upstream scale tests do. Creates eight
# kwok nodes, two zones in each of four regions (eu-west-1, eu-central-1,
# us-east-1, ap-south-1: hack/nodes.sh, SOMASTACK_REGIONS overrides them), and,
# unless SOMASTACK_REAL_NODES=0, two real nodes in eu-west-1 and eu-central-1
# (hack/real-nodes.sh); then installs the somastack CRDs.
#
# Sized for hack/bench: a Service range of 8,190 addresses (SERVICE_CIDR
# below; the API server's default /24 ran out at about 250 Services) and kwok
# nodes that take 1,000 pods each (hack/nodes.sh). The API server keeps an
# audit log of the operator's own requests only (its ServiceAccount, level
# Metadata) in .local/kwok/clusters/<name>/logs/audit.log, rotated at 256 MB
# with 4 backups: hack/bench counts the operator's API requests from it.
#
# The kubeconfig is written to .local/kubeconfig (never ~/.kube/config):
#   export KUBECONFIG=$PWD/.local/kubeconfig
# Running it again while the cluster is up only re-applies nodes and CRDs.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

"$ROOT/hack/build-tools.sh"
mkdir -p "$LOCAL_DIR"

mode=kwok-only
real_nodes_enabled && mode=real-nodes
if cluster_running; then
  log "cluster '$CLUSTER_NAME' already running ($(kubectl_local config view --minify -o jsonpath='{.clusters[0].cluster.server}'))"
  # The API server's flags differ with real nodes (kubelet client
  # certificate, advertised address, certificate names).
  started=$(cat "$LOCAL_DIR/cluster-mode" 2>/dev/null || echo kwok-only)
  [[ "$started" == "$mode" ]] ||
    die "the running cluster was started $started, this run wants $mode (SOMASTACK_REAL_NODES); stop it first: hack/cluster-down.sh"
else
  # A cluster whose processes are gone (machine restarted) is recreated.
  KWOK_WORKDIR="$KWOK_WORKDIR" kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$LOCAL_KUBECONFIG" >/dev/null 2>&1 || true
  rm -f "$LOCAL_KUBECONFIG"
  # A port held by something else (another cluster of this kind, left running
  # from another checkout) would make the API server fail while kubectl talks
  # to the other one; say so instead.
  for port in "$APISERVER_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$KWOK_PORT" "$KCM_PORT" "$SCHEDULER_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "127.0.0.1:$port is already in use (another local cluster?); stop it, or set SOMASTACK_PORT_BASE"
    fi
  done
  log "starting cluster '$CLUSTER_NAME' on 127.0.0.1:$APISERVER_PORT (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
  loopback=127.0.0.1
  pki="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki"
  # Only the operator's identity (the chart's ServiceAccount: an operator on
  # this machine holds a token of it, from install_local_release, and the
  # chart's pods run as it), without request or response bodies.
  cat >"$LOCAL_DIR/audit-policy.yaml" <<YAML
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:$OPERATOR_NAMESPACE:$OPERATOR_RELEASE"]
- level: None
YAML
  # kwokctl 0.8 takes only one --extra-args per component past the first one
  # it sees (its index bookkeeping panics otherwise), so further arguments go
  # in a KwokctlConfiguration of their own.
  {
    echo "apiVersion: config.kwok.x-k8s.io/v1alpha1"
    echo "kind: KwokctlConfiguration"
    if real_nodes_enabled; then
      # Pods reach the API server at the `kubernetes` Service address (the
      # first of the default range 10.0.0.0/24), relayed from the bridge.
      echo "options:"
      echo "  kubeApiserverCertSANs: [10.0.0.1, 10.213.0.1]"
    fi
    echo "componentsPatches:"
    # kwok simulates only the nodes annotated as fake; real nodes are left
    # to their kubelets.
    echo "- name: kwok-controller"
    echo "  extraArgs:"
    echo "  - {key: manage-all-nodes, value: 'false'}"
    echo "  - {key: manage-nodes-with-annotation-selector, value: kwok.x-k8s.io/node=fake}"
    echo "- name: kube-apiserver"
    echo "  extraArgs:"
    echo "  - {key: service-cluster-ip-range, value: $SERVICE_CIDR}"
    echo "  - {key: audit-log-maxsize, value: '256'}"
    echo "  - {key: audit-log-maxbackup, value: '4'}"
    if real_nodes_enabled; then
      # The API server reaches kubelets at their InternalIP (the pod bridge,
      # never a DNS lookup of a node name) with a client certificate, and
      # advertises the bridge address for the `kubernetes` Service
      # (hack/real-nodes.sh relays it to loopback).
      echo "  - {key: kubelet-preferred-address-types, value: InternalIP}"
      echo "  - {key: kubelet-client-certificate, value: '$pki/admin.crt'}"
      echo "  - {key: kubelet-client-key, value: '$pki/admin.key'}"
      echo "  - {key: advertise-address, value: 10.213.0.1}"
    fi
  } >"$LOCAL_DIR/kwokctl-components.yaml"
  echo "$mode" >"$LOCAL_DIR/cluster-mode"
  KWOK_WORKDIR="$KWOK_WORKDIR" with_heartbeat "starting the control plane" \
    kwokctl create cluster --name "$CLUSTER_NAME" --runtime binary \
      --config "$ROOT/hack/kwok-stages.yaml" --config "$LOCAL_DIR/kwokctl-components.yaml" \
      --kubeconfig "$LOCAL_KUBECONFIG" \
      --kube-audit-policy "$LOCAL_DIR/audit-policy.yaml" \
      --etcd-binary "$ETCD_BIN/etcd" \
      --kube-apiserver-binary "$K8S_BIN/kube-apiserver" \
      --kube-controller-manager-binary "$K8S_BIN/kube-controller-manager" \
      --kube-scheduler-binary "$K8S_BIN/kube-scheduler" \
      --kwok-controller-binary "$KWOK_BIN/kwok" \
      --kube-apiserver-port "$APISERVER_PORT" --etcd-port "$ETCD_PORT" --controller-port "$KWOK_PORT" \
      --kube-controller-manager-port "$KCM_PORT" --kube-scheduler-port "$SCHEDULER_PORT" \
      --disable-qps-limits \
      --extra-args "etcd=listen-client-urls=http://$loopback:$ETCD_PORT" \
      --extra-args "etcd=advertise-client-urls=http://$loopback:$ETCD_PORT" \
      --extra-args "etcd=listen-peer-urls=http://$loopback:$ETCD_PEER_PORT" \
      --extra-args "etcd=initial-advertise-peer-urls=http://$loopback:$ETCD_PEER_PORT" \
      --extra-args "etcd=initial-cluster=node0=http://$loopback:$ETCD_PEER_PORT" \
      --extra-args "kube-apiserver=bind-address=$loopback" \
      --extra-args "kube-controller-manager=bind-address=$loopback" \
      --extra-args "kube-scheduler=bind-address=$loopback" \
      --extra-args "kwok-controller=server-address=$loopback:$KWOK_PORT" \
      --wait 120s > "$LOCAL_DIR/kwokctl-create.log" 2>&1 ||
    { tail -20 "$LOCAL_DIR/kwokctl-create.log" >&2; die "the control plane did not start; logs in $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs"; }
fi

log "waiting for the API server to be ready"
for _ in $(seq 1 120); do cluster_running && break; sleep 1; done
cluster_running || die "the API server did not become ready; logs in $KWOK_WORKDIR/clusters/$CLUSTER_NAME/logs"

log "creating kwok nodes: two zones in each of ${SOMASTACK_REGIONS:-four regions} (hack/nodes.sh)"
"$ROOT/hack/nodes.sh" | kubectl_local apply --server-side --field-manager=somastack-hack -f - >/dev/null
kubectl_local wait --for=condition=Ready node --all --timeout=120s >/dev/null

if real_nodes_enabled; then
  log "starting the real nodes (hack/real-nodes.sh)"
  "$ROOT/hack/real-nodes.sh" up
fi

log "installing the somastack CRDs"
kubectl_local apply --server-side --force-conflicts --field-manager=somastack-hack -f "$ROOT/charts/somastack-operator/crds/" >/dev/null
kubectl_local wait --for=condition=Established -f "$ROOT/charts/somastack-operator/crds/" --timeout=60s >/dev/null
# kubectl caches discovery (for hours) from its first call, made before the
# CRDs existed; refresh it so `kubectl get somastack` knows the category.
kubectl_local api-resources --cached=false >/dev/null

range=$(kubectl_local get servicecidr kubernetes -o jsonpath='{.spec.cidrs[0]}' 2>/dev/null || true)
[[ "$range" == "$SERVICE_CIDR" ]] ||
  log "warning: the Service range is '${range:-unknown}', not $SERVICE_CIDR (a cluster started before it changed? hack/cluster-down.sh, then up)"

log "cluster ready: export KUBECONFIG=$LOCAL_KUBECONFIG"
kubectl_local get nodes -L topology.kubernetes.io/region -L topology.kubernetes.io/zone >&2
