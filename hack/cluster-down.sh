#!/usr/bin/env bash
# Stops the local cluster and deletes its state (.local/kwok).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
command -v kwokctl >/dev/null || die "kwokctl not built; nothing to stop"
# Real nodes first: they give back the host settings they changed.
if [[ -d "$LOCAL_DIR/nodes" ]]; then "$ROOT/hack/real-nodes.sh" down; fi
KWOK_WORKDIR="$KWOK_WORKDIR" kwokctl delete cluster --name "$CLUSTER_NAME" --kubeconfig "$LOCAL_KUBECONFIG" >&2 || true
rm -f "$LOCAL_KUBECONFIG" "$LOCAL_DIR/cluster-mode"
log "cluster '$CLUSTER_NAME' stopped"
