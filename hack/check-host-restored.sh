#!/usr/bin/env bash
# Checks that the real nodes give the host back as they found it: snapshots
# what they change (sysctls, iptables and ip6tables, links, addresses, routes,
# mounts, cgroups, host folders, processes), starts the real nodes and runs a
# pod on each (veths, network namespaces, overlay mounts, cgroups), stops them
# with `hack/real-nodes.sh down`, snapshots again and compares. Leaves the
# real nodes running if they were.
#
#   hack/check-host-restored.sh     (hack/test.sh runs it)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
export KUBECONFIG="$LOCAL_KUBECONFIG"
NODES_DIR="$LOCAL_DIR/nodes"

# Keys that change on their own (counters, entropy, the last PID, ...).
VOLATILE='^(kernel\.random\.|kernel\.ns_last_pid|kernel\.pty\.nr|fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\.)|net\.netfilter\.nf_conntrack_count|kernel\.sched_domain|vm\.stat_|fs\.binfmt_misc|kernel\.tainted|net\.ipv4\.tcp_fastopen_key|kernel\.core_pattern)'

snapshot() {
  echo "## sysctl"
  sysctl -a 2>/dev/null | grep -Ev "$VOLATILE" | sort
  local tool
  for tool in iptables ip6tables; do
    echo "## $tool"
    # Without counters and comments; a table with nothing but empty,
    # accepting built-in chains is what nf_tables makes on first use.
    "$tool-save" 2>/dev/null | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//' |
      awk '/^\*/ { t = $0; body = ""; real = 0; next }
           /^COMMIT/ { if (real) print t "\n" body "COMMIT"; next }
           { body = body $0 "\n"; if ($0 !~ /^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$/) real = 1 }'
  done
  echo "## ipsets"; ipset list -n 2>/dev/null | sort
  echo "## links"; ip -o link show | awk -F': ' '{ print $2 }' | cut -d@ -f1 | sort
  echo "## addresses"; ip -o addr show | awk '{ print $2, $4 }' | sort
  echo "## routes"; ip route show table all | sort
  echo "## mounts"; awk '{ print $2, $3 }' /proc/self/mounts | sort
  echo "## cgroups"; find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name 'somastack*' | sort
  echo "## host paths"
  local p
  for p in /run/containerd /var/lib/kubelet /var/log/pods /var/log/containers /var/run/netns /etc/cni/net.d /opt/cni; do
    [[ -e "$p" ]] && echo "$p"
  done
  echo "## processes"
  # By process name: kubelet, containerd and its shims, kube-proxy,
  # kube-router, the API relay, pod sandboxes.
  # shellcheck disable=SC2009 # pgrep would add PIDs, which differ between the two snapshots
  ps -eo comm=,args= | grep -E '^(kubelet|containerd|kube-proxy|kube-router|socat|pause|runc)' | sort || true
}

was_up=false
[[ -d "$NODES_DIR" ]] && was_up=true
cluster_running || die "the local cluster is not running"
"$ROOT/hack/real-nodes.sh" down
before=$(mktemp); after=$(mktemp)
snapshot >"$before"

"$ROOT/hack/real-nodes.sh" up
ns=host-check-$$
kubectl create namespace "$ns" >/dev/null
for node in $(kubectl get nodes -l somastack.io/real-node=true -o name); do
  node=${node#node/}
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: on-$node, namespace: $ns}
spec:
  nodeSelector: {kubernetes.io/hostname: $node}
  tolerations: [{key: node.somastack.io/real, operator: Exists}]
  containers: [{name: pause, image: localhost/somastack/pause:1, imagePullPolicy: Never}]
EOF
done
kubectl -n "$ns" wait --for=condition=Ready pod --all --timeout=60s >/dev/null
running=$(kubectl -n "$ns" get pods -o jsonpath='{range .items[*]}{.spec.nodeName}={.status.containerStatuses[0].containerID}{" "}{end}')
log "pods running: $running"
[[ "$running" == *containerd://* ]] || die "no pod ran on a real node"

"$ROOT/hack/real-nodes.sh" down
kubectl delete namespace "$ns" --wait=false >/dev/null
snapshot >"$after"
if ! diff -u "$before" "$after" >"$LOCAL_DIR/host-diff.txt"; then
  cat "$LOCAL_DIR/host-diff.txt" >&2
  die "the host is not as it was before the real nodes started (diff above, also in .local/host-diff.txt)"
fi
rm -f "$before" "$after" "$LOCAL_DIR/host-diff.txt"
log "host restored: sysctls, iptables, links, addresses, routes, mounts, cgroups, host folders and processes as before"
if $was_up; then "$ROOT/hack/real-nodes.sh" up; fi
