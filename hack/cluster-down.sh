#!/usr/bin/env bash
# Stops the local cluster and deletes its state (.local/kwok).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
command -v kwokctl >/dev/null || die "kwokctl not built; nothing to stop"
# Real nodes first: they give back the host settings they changed.
if [[ -d "$LOCAL_DIR/nodes" ]]; then "$ROOT/hack/real-nodes.sh" down; fi
KWOK_WORKDIR="$KWOK_WORKDIR" kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$LOCAL_KUBECONFIG" >&2 || true
# Components started again outside kwokctl (hack/chaos restarts the
# kube-controller-manager and kube-scheduler that exit on losing their
# Lease, as a kubelet would) are not kwokctl's to stop: stop every process
# still running with this cluster's folder in its command line.
cluster_dir="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/"
for pid in $(pgrep -f -- "$cluster_dir" || true); do
  [[ "$pid" == "$$" ]] && continue
  log "stopping a leftover process of the cluster: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
done
rm -f "$LOCAL_KUBECONFIG" "$LOCAL_DIR/cluster-mode"
log "cluster '$CLUSTER_NAME' stopped"
