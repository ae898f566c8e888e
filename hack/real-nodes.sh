#!/usr/bin/env bash
# Real nodes for the local cluster: kubelet + containerd 2.x + runc + the CNI
# bridge plugin, joined to the kwokctl control plane beside the kwok nodes.
#
#   hack/real-nodes.sh up        start them (the cluster must be up; cluster-up.sh calls it)
#   hack/real-nodes.sh down      stop them, restore the host (cluster-down.sh calls it)
#   hack/real-nodes.sh load      import target/image/*.oci.tar (hack/build-image.sh) into each node
#   hack/real-nodes.sh status    what runs and its memory
#
# What it changes on the host, and gives back on `down` (docs/real-nodes.md):
#   - a bridge `soma0` (10.213.0.1/16), the pods' only network;
#   - iptables: FORWARD from or to soma0 and any other interface is dropped
#     before the first pod starts (pod traffic never leaves the machine; no
#     masquerade); kubelet's, kube-proxy's and kube-router's chains. `down`
#     restores the tables saved by `up` (iptables-save/-restore, IPv4 and
#     IPv6) and destroys the ipsets kube-router made;
#   - sysctls kubelet and the bridge plugin set (saved and written back);
#   - cgroups under /somastack-nodes in every v1 hierarchy; mounts under
#     .local/nodes; processes (kubelet, containerd, shims, kube-proxy,
#     kube-router, the API relay).
# NetworkPolicies are enforced: kube-router, firewall only (no routing, no
# service proxy, no BGP, no health or metrics listener), one for the machine
# like kube-proxy, since both nodes share one network namespace and one
# node address (its "local pods" are those of that host IP: every pod).
# Every listener is on loopback or on soma0.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

NODES_DIR="$LOCAL_DIR/nodes"
STATE_DIR="$NODES_DIR/host-state"
BRIDGE=soma0
BRIDGE_IP=10.213.0.1
POD_CIDR=10.213.0.0/16
CGROUP_ROOT=/somastack-nodes
PKI="$KWOK_WORKDIR/clusters/$CLUSTER_NAME/pki"
# name region zone index; index picks the pods' address range and ports.
REAL_NODES="${SOMASTACK_REAL_NODE_LIST:-real-eu-west-1:eu-west-1:eu-west-1a:1 real-eu-central-1:eu-central-1:eu-central-1a:2}"
# Sysctls the kubelet, kube-proxy and the bridge plugin are known to set.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.ipv4.conf.all.route_localnet net.ipv4.conf.all.forwarding
  net.ipv6.conf.all.forwarding net.netfilter.nf_conntrack_max)
# Host folders kubelet and containerd use whatever their configuration says
# (shim sockets, device-plugin and pod-resources sockets, container log
# links); removed by `down` when `up` did not find them.
HOST_PATHS=(/run/containerd /var/lib/kubelet /var/log/pods /var/log/containers)
PAUSE_IMAGE="localhost/somastack/pause:1"
# The NetworkPolicy enforcer: kube-router's firewall, built from its Go
# module (github.com/cloudnativelabs/kube-router/v2; no replace directives,
# so `go install` works) into the tools' cache.
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
KUBE_ROUTER_BIN="$BIN_DIR/kube-router-$KUBE_ROUTER_VERSION"
# Loopback ports: kubelet healthz PORT_BASE-20000+100+i, kubelet API on the
# bridge 10250+i, kube-proxy healthz/metrics +110/+111.
kubelet_port() { echo $((10250 + $1)); }
healthz_port() { echo $((PORT_BASE - 20000 + 100 + $1)); }
PROXY_HEALTHZ_PORT=$((PORT_BASE - 20000 + 110))
PROXY_METRICS_PORT=$((PORT_BASE - 20000 + 111))

need_root() {
  [[ $(id -u) == 0 ]] ||
    die "real nodes need root (kubelet, containerd, iptables); run as root, or set SOMASTACK_REAL_NODES=0 for kwok nodes only"
}

install_packages() {
  local missing=() pkg
  for pkg in runc containernetworking-plugins conntrack socat iptables ipset; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The sandbox image: a static pause binary in a FROM-scratch image, built
# with buildah and cached by the hash of its source.
pause_image() {
  local hash out
  hash=$(sha256sum "$ROOT/hack/pause/pause.c" | cut -c1-16)
  out="$CACHE_DIR/images/pause-$hash.tar"
  if [[ ! -f "$out" ]]; then
    log "building the pause image ($PAUSE_IMAGE)"
    command -v buildah >/dev/null || { apt-get update -qq >/dev/null && apt-get install -y -qq buildah >/dev/null; }
    local work; work=$(mktemp -d)
    gcc -static -Os -Wall -Wextra -Werror -o "$work/pause" "$ROOT/hack/pause/pause.c"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/Containerfile"
    local storage=(--storage-driver vfs --root "$CACHE_DIR/buildah/root" --runroot "$CACHE_DIR/buildah/runroot")
    buildah "${storage[@]}" build --isolation chroot -q -t "$PAUSE_IMAGE" -f "$work/Containerfile" "$work" >/dev/null
    mkdir -p "$CACHE_DIR/images"
    rm -f "$out.tmp"
    buildah "${storage[@]}" push -q "$PAUSE_IMAGE" "oci-archive:$out.tmp:$PAUSE_IMAGE" >/dev/null
    mv "$out.tmp" "$out"
    rm -rf "$work"
  fi
  echo "$out"
}

save_host_state() {
  [[ -d "$STATE_DIR" ]] && return   # saved by an earlier `up` not yet undone
  mkdir -p "$STATE_DIR"
  local key
  for key in "${SYSCTLS[@]}"; do
    sysctl -n "$key" >"$STATE_DIR/sysctl.$key" 2>/dev/null || rm -f "$STATE_DIR/sysctl.$key"
  done
  iptables-save >"$STATE_DIR/iptables"
  ip6tables-save >"$STATE_DIR/ip6tables"
  ipset list -n >"$STATE_DIR/ipsets" 2>/dev/null || true
  local path
  for path in "${HOST_PATHS[@]}"; do
    [[ -e "$path" ]] || echo "$path" >>"$STATE_DIR/absent-paths"
  done
}

restore_host_state() {
  [[ -d "$STATE_DIR" ]] || return 0
  local f key
  for f in "$STATE_DIR"/sysctl.*; do
    [[ -e "$f" ]] || continue
    key=${f##*/sysctl.}
    [[ "$(sysctl -n "$key" 2>/dev/null)" == "$(cat "$f")" ]] || sysctl -qw "$key=$(cat "$f")" >/dev/null
  done
  if [[ -f "$STATE_DIR/absent-paths" ]]; then
    local path
    while IFS= read -r path; do rm -rf "$path"; done <"$STATE_DIR/absent-paths"
  fi
  restore_tables iptables "$STATE_DIR/iptables"
  restore_tables ip6tables "$STATE_DIR/ip6tables"
  # kube-router's ipsets, once no rule refers to them any more.
  if [[ -f "$STATE_DIR/ipsets" ]]; then
    local current set
    current=$(ipset list -n 2>/dev/null || true)
    for set in $current; do
      grep -qxF "$set" "$STATE_DIR/ipsets" || ipset destroy "$set"
    done
  fi
  rm -rf "$STATE_DIR"
}

# restore_tables iptables|ip6tables SAVED: each table as `up` found it. A
# table missing from SAVED (nf_tables creates tables on first use) is left
# with its built-in chains empty and accepting, as a new table is; restoring a
# table replaces its rules and drops chains not in it.
restore_tables() {
  local tool=$1 saved=$2 table current
  for table in filter nat mangle raw security; do
    if grep -qx "\*$table" "$saved"; then
      awk -v t="*$table" '$0 == t { p = 1 } p { print } p && /^COMMIT/ { exit }' "$saved" | "$tool-restore"
    # Captured, not piped into grep -q: under pipefail, grep -q leaving
    # early kills a large table's $tool-save with SIGPIPE, and the table was
    # then judged absent and its rules (kubelet's, kube-router's) left.
    elif current=$("$tool-save" -t "$table" 2>/dev/null) && grep -qx "\*$table" <<<"$current"; then
      { echo "*$table"
        "$tool-save" -t "$table" | sed -nE 's/^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) .*/:\1 ACCEPT/p'
        echo COMMIT; } | "$tool-restore"
    fi
  done
}

bridge_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_IP/16" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # ClusterIPs (the default Service range) route to the bridge: the host's
  # own calls to a Service (the API server calling a webhook, a test calling
  # an Installation) are DNATed by kube-proxy to a pod on soma0, and one
  # that kube-proxy has no rule for yet stays on soma0 instead of taking the
  # default route off the machine. The route goes with the bridge.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Before any pod exists, in the mangle table (which runs before the filter
  # table, where kubelet and kube-proxy put their ACCEPT rules): nothing is
  # forwarded between soma0 and any other interface, in either direction;
  # from soma0 the host accepts only replies and the API relay.
  local chain=SOMASTACK-PODS
  iptables -t mangle -N "$chain" 2>/dev/null || iptables -t mangle -F "$chain"
  iptables -t mangle -A "$chain" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -t mangle -A "$chain" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP
  iptables -t mangle -N "$chain-IN" 2>/dev/null || iptables -t mangle -F "$chain-IN"
  iptables -t mangle -A "$chain-IN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -t mangle -A "$chain-IN" -p tcp -d "$BRIDGE_IP" --dport "$APISERVER_PORT" -j RETURN
  iptables -t mangle -A "$chain-IN" -j DROP
  iptables -t mangle -C FORWARD -j "$chain" 2>/dev/null || iptables -t mangle -I FORWARD 1 -j "$chain"
  iptables -t mangle -C INPUT -i "$BRIDGE" -j "$chain-IN" 2>/dev/null ||
    iptables -t mangle -I INPUT 1 -i "$BRIDGE" -j "$chain-IN"
  # No IPv6 on the bridge at all.
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" >/dev/null 2>&1 || true
}

# cgroup_dir PATH: creates PATH in every cgroup v1 hierarchy; cpuset's cpus
# and mems are copied from the parent (a cpuset cgroup without them takes no
# process).
cgroup_dir() {
  local path=$1 parent=${1%/*} h f
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [[ -f "$h/cgroup.procs" ]] || continue
    mkdir -p "$h$path"
    [[ -f "$h/cpuset.cpus" ]] || continue
    for f in cpuset.cpus cpuset.mems; do
      [[ -s "$h$path/$f" ]] || cat "$h$parent/$f" >"$h$path/$f"
    done
  done
}

# Removes a cgroup tree bottom-up, killing what still runs in it.
cgroups_down() {
  local h d
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [[ -d "$h$CGROUP_ROOT" ]] || continue
    while IFS= read -r d; do
      xargs -r kill -9 <"$d/cgroup.procs" 2>/dev/null || true
    done < <(find "$h$CGROUP_ROOT" -depth -type d)
  done
  sleep 0.5
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [[ -d "$h$CGROUP_ROOT" ]] || continue
    find "$h$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

issue_cert() {  # issue_cert OUT_PREFIX SUBJECT
  local out=$1 subject=$2
  [[ -f "$out.crt" ]] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$out.key" 2>/dev/null
  openssl req -new -key "$out.key" -subj "$subject" -out "$out.csr" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -out "$out.crt" 2>/dev/null
  rm -f "$out.csr"
}

kubeconfig_for() {  # kubeconfig_for FILE CERT_PREFIX
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: me, user: {client-certificate: "$2.crt", client-key: "$2.key"}}]
contexts: [{name: local, context: {cluster: local, user: me}}]
current-context: local
EOF
}

start_daemon() {  # start_daemon NAME LOG CMD...: runs CMD in its own session
  local name=$1 logfile=$2; shift 2
  (
    # A daemon keeps none of its caller's other open files: a lock the
    # caller holds (`flock FILE hack/test.sh`) would stay held for as long
    # as the node runs, and a CI runner's pipe would stay open.
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "$@" >"$logfile" 2>&1 < /dev/null
  ) &
  echo $! >"$NODES_DIR/$name.pid"
}

node_up() {
  local name=$1 region=$2 zone=$3 index=$4
  local d="$NODES_DIR/$name"
  mkdir -p "$d"/{containerd/tmp,cni/net.d,cni/ipam,kubelet,pki,logs}
  local listener
  {
    cat <<EOF
version = 4
root = "$d/containerd/root"
state = "$d/containerd/state"
temp = "$d/containerd/tmp"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri"]

EOF
    # The listeners: the node's own sockets; no TCP, debug or metrics endpoint.
    for listener in "grpc=$d/containerd.sock" "ttrpc=$d/containerd.sock.ttrpc" grpc-tcp= debug= metrics=; do
      printf '[plugins."io.containerd.server.v1.%s"]\n  address = "%s"\n' "${listener%%=*}" "${listener#*=}"
    done
    cat <<EOF

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = "/usr/sbin/runc"
      Root = "$d/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$d/cni/net.d"
EOF
  } >"$d/containerd.toml"
  cat >"$d/cni/net.d/10-somastack.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "somastack",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "rangeStart": "10.213.$index.2", "rangeEnd": "10.213.$index.254", "gateway": "$BRIDGE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
  start_daemon "$name-containerd" "$d/logs/containerd.log" \
    env PATH="$CONTAINERD_BIN:$PATH" "$CONTAINERD_BIN/containerd" --config "$d/containerd.toml"
  for _ in $(seq 1 60); do
    "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" version >/dev/null 2>&1 ||
    { tail -20 "$d/logs/containerd.log" >&2; die "containerd of $name did not start"; }
  "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" -n k8s.io images import \
    --no-unpack=false "$PAUSE_ARCHIVE" >/dev/null

  issue_cert "$d/pki/kubelet" "/O=system:nodes/CN=system:node:$name"
  kubeconfig_for "$d/kubelet.kubeconfig" "$d/pki/kubelet"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: $(kubelet_port "$index")
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $(healthz_port "$index")
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$d/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT/$name
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
resolvConf: ""
clusterDNS: []
maxPods: 30
podLogsDir: $d/logs/pods
registerWithTaints:
- {key: node.somastack.io/real, value: "true", effect: NoSchedule}
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
serializeImagePulls: false
EOF
  # The kubelet's cgroupRoot must exist in every hierarchy.
  cgroup_dir "$CGROUP_ROOT"
  cgroup_dir "$CGROUP_ROOT/$name"
  start_daemon "$name-kubelet" "$d/logs/kubelet.log" \
    "$K8S_NODE_BIN/kubelet" --config "$d/kubelet.yaml" --kubeconfig "$d/kubelet.kubeconfig" \
    --root-dir "$d/kubelet" --cert-dir "$d/pki" --hostname-override "$name" --node-ip "$BRIDGE_IP" \
    --node-labels "topology.kubernetes.io/region=$region,topology.kubernetes.io/zone=$zone,type=real,somastack.io/real-node=true"
}

proxy_up() {
  local d="$NODES_DIR/kube-proxy" first
  first=${REAL_NODES%% *}; first=${first%%:*}
  mkdir -p "$d"
  issue_cert "$d/kube-proxy" "/CN=system:kube-proxy"
  kubeconfig_for "$d/kubeconfig" "$d/kube-proxy"
  cat >"$d/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$d/kubeconfig"}
hostnameOverride: $first
bindAddress: $BRIDGE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$BRIDGE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, min: 0}
EOF
  start_daemon kube-proxy "$d/kube-proxy.log" "$K8S_NODE_BIN/kube-proxy" --config "$d/config.yaml"
  # The API server listens on loopback only; pods reach it at the bridge
  # address the `kubernetes` Service points to, relayed to loopback.
  start_daemon api-relay "$d/api-relay.log" socat \
    "TCP-LISTEN:$APISERVER_PORT,bind=$BRIDGE_IP,reuseaddr,fork" "TCP:127.0.0.1:$APISERVER_PORT"
}

# kube-router's binary, built once into the cache (a warm Go build cache
# makes it a link; cold, a few minutes).
build_kube_router() {
  local steps_total=1
  install_into "$KUBE_ROUTER_BIN" 1 "kube-router $KUBE_ROUTER_VERSION" build_kube_router_into
}
build_kube_router_into() {
  CGO_ENABLED=0 GOBIN="$1" go install -trimpath \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
}

# NetworkPolicies enforced for the real nodes' pods: kube-router's firewall
# only (--run-router=false: no BGP, no routes; --run-service-proxy=false:
# kube-proxy serves Services), no health (--health-port=0) or metrics
# listener, talking to the API server on loopback with a client certificate
# of its own (CN=system:kube-router) that may read what it enforces. Its
# filter chains (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*) and its ipsets
# go away with `down`.
netpol_up() {
  local d="$NODES_DIR/kube-router" first
  first=${REAL_NODES%% *}; first=${first%%:*}
  mkdir -p "$d"
  issue_cert "$d/kube-router" "/CN=system:kube-router"
  kubeconfig_for "$d/kubeconfig" "$d/kube-router"
  kubectl_local apply --server-side --field-manager=somastack-real-nodes -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "somastack:kube-router"}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "somastack:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "somastack:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-router"}]
EOF
  start_daemon kube-router "$d/kube-router.log" "$KUBE_ROUTER_BIN/kube-router" \
    --kubeconfig "$d/kubeconfig" --hostname-override "$first" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --enable-ipv4=true --enable-ipv6=false --health-port=0 --metrics-port=0 \
    --service-cluster-ip-range "$SERVICE_CIDR"
  # Its top-level chain exists once it has synced the policies for the
  # first time (captured, not piped into grep -q: see restore_tables).
  local chains=""
  for _ in $(seq 1 60); do
    chains=$(iptables -S 2>/dev/null || true)
    grep -q -- '-N KUBE-ROUTER-FORWARD' <<<"$chains" && break
    kill -0 "$(cat "$NODES_DIR/kube-router.pid")" 2>/dev/null ||
      { tail -20 "$d/kube-router.log" >&2; die "kube-router exited"; }
    sleep 0.5
  done
  grep -q -- '-N KUBE-ROUTER-FORWARD' <<<"$chains" ||
    { tail -20 "$d/kube-router.log" >&2; die "kube-router did not set up its chains within 30s"; }
  log "NetworkPolicies enforced by kube-router $KUBE_ROUTER_VERSION (firewall only)"
}

# Imports the project's images (hack/build-image.sh: target/image/*.oci.tar)
# into every real node's containerd; no registry exists, so this is how a
# node gets them. Pods refer to them as localhost/<name>:<version>.
load_images() {
  local archives=("$ROOT"/target/image/*.oci.tar) spec name d
  if [[ ! -e "${archives[0]}" ]]; then
    log "no images to load (hack/build-image.sh builds them)"
    return 0
  fi
  for spec in $REAL_NODES; do
    name=${spec%%:*}; d="$NODES_DIR/$name"
    [[ -S "$d/containerd.sock" ]] || continue
    local a image by_digest
    for a in "${archives[@]}"; do
      "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" -n k8s.io images import "$a" >/dev/null 2>&1 ||
        die "could not import $a into $name"
      # Also under its digest, as a registry pull would name it: Capsules
      # pin images by digest (localhost/<name>@sha256:...).
      image=$(basename "$a" .oci.tar)
      by_digest=$(image_ref "$image")
      "$CONTAINERD_BIN/ctr" --address "$d/containerd.sock" -n k8s.io images tag --force \
        "localhost/$image:$IMAGE_VERSION" "$by_digest" >/dev/null 2>&1 ||
        die "could not name $image $by_digest in $name"
    done
  done
  log "images loaded into the real nodes: $(basename -a "${archives[@]}" | tr '\n' ' ')"
}

stop_pidfile() {
  local f=$1 pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  need_root
  local f
  # Kubelets first (nothing restarts containers), then what runs in pods,
  # then the shims and containerd, then the rest.
  for f in "$NODES_DIR"/*-kubelet.pid; do [[ -e "$f" ]] && stop_pidfile "$f"; done
  cgroups_down
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $NODES_DIR/" 2>/dev/null || true
  for f in "$NODES_DIR"/*.pid; do [[ -e "$f" ]] && stop_pidfile "$f"; done
  cgroups_down
  # Mounts under the nodes' folders (overlay rootfs, tmpfs volumes, shm,
  # network namespaces), deepest first.
  local m
  while IFS= read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v p="$NODES_DIR/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    # Host ends of pods' veths still on the bridge (sandboxes never torn
    # down); only those: other software's veths are not ours to remove.
    local v
    for v in $(ip -o link show master "$BRIDGE" type veth 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link delete "$v" 2>/dev/null || true
    done
    ip link delete "$BRIDGE"
  fi
  restore_host_state
  if [[ -n "$(kubectl_local get nodes -l somastack.io/real-node=true -o name 2>/dev/null || true)" ]]; then
    kubectl_local delete nodes -l somastack.io/real-node=true --wait=false >/dev/null 2>&1 || true
  fi
  rm -rf "$NODES_DIR"
  log "real nodes stopped; host settings restored"
}

up() {
  need_root
  real_nodes_enabled || die "SOMASTACK_REAL_NODES=0: real nodes are off"
  cluster_running || die "the local cluster is not running: hack/cluster-up.sh"
  [[ -f "$K8S_NODE_BIN/kubelet" && -f "$CONTAINERD_BIN/containerd" ]] || "$ROOT/hack/build-tools.sh"
  [[ -f "$KUBE_ROUTER_BIN/.complete" ]] || build_kube_router
  install_packages
  PAUSE_ARCHIVE=$(pause_image)
  mkdir -p "$NODES_DIR"
  save_host_state
  bridge_up
  local spec name region zone index
  for spec in $REAL_NODES; do
    IFS=: read -r name region zone index <<<"$spec"
    if [[ -f "$NODES_DIR/$name-kubelet.pid" ]] && kill -0 "$(cat "$NODES_DIR/$name-kubelet.pid")" 2>/dev/null; then
      log "real node $name already running"; continue
    fi
    log "starting real node $name ($region/$zone)"
    node_up "$name" "$region" "$zone" "$index"
  done
  [[ -f "$NODES_DIR/kube-proxy.pid" ]] || proxy_up
  [[ -f "$NODES_DIR/kube-router.pid" ]] || netpol_up
  load_images
  for spec in $REAL_NODES; do
    name=${spec%%:*}
    for _ in $(seq 1 120); do
      kubectl_local get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True && break
      sleep 1
    done
    kubectl_local get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True ||
      { tail -20 "$NODES_DIR/$name/logs/kubelet.log" >&2; die "real node $name did not become Ready"; }
  done
  log "real nodes ready"
}

# What runs and the memory it holds (resident set, MiB), one line each.
status() {
  local f pid name rss
  printf '%-28s %8s %10s\n' COMPONENT PID RSS_MIB
  for f in "$NODES_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    name=$(basename "$f" .pid); pid=$(cat "$f")
    # socat and containerd run under `env`/setsid as the recorded process.
    rss=$(ps -o rss= -p "$pid" 2>/dev/null || true)
    if [[ -n "$rss" ]]; then
      printf '%-28s %8s %10.1f\n' "$name" "$pid" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')"
    else
      printf '%-28s %8s %10s\n' "$name" "$pid" dead
    fi
  done
  local shims
  shims=$(pgrep -f "containerd-shim-runc-v2 .*-address $NODES_DIR/" || true)
  if [[ -n "$shims" ]]; then
    # shellcheck disable=SC2086
    printf '%-28s %8s %10.1f\n' "shims ($(echo $shims | wc -w))" - \
      "$(ps -o rss= -p "$(echo $shims | tr ' ' ,)" | awk '{ s += $1 } END { print s / 1024 }')"
  fi
  [[ -d "$STATE_DIR" ]] && echo "host state saved in $STATE_DIR (restored by: hack/real-nodes.sh down)"
  return 0
}

case "${1:-}" in
  up) up ;;
  load) need_root; load_images ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|load|status" ;;
esac
