#!/usr/bin/env bash
# Builds, from pinned Go modules through the module proxy, every binary the
# local cluster needs: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, kwokctl and helm; for the real nodes (unless
# SOMASTACK_REAL_NODES=0) also kubelet, kube-proxy and containerd. Results are
# cached outside the repository (see hack/lib.sh); a second run finds them and
# returns at once.
#
#   hack/build-tools.sh            build whatever is missing
#   hack/build-tools.sh --print    print the PATH entries to use the binaries
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

if [[ "${1:-}" == "--print" ]]; then
  echo "$K8S_BIN:$ETCD_BIN:$KWOK_BIN:$HELM_BIN:$K8S_NODE_BIN:$CONTAINERD_BIN"; exit 0
fi

command -v go >/dev/null || die "go is not installed (the project needs Go >= 1.26)"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
mkdir -p "$BIN_DIR" "$CACHE_DIR/src"
# One build at a time per cache: a second run (another checkout, a benchmark
# next to a test run) waits here, then finds the first one's results.
exec 9>"$CACHE_DIR/.build-tools.lock"
if ! flock -n 9; then
  log "another hack/build-tools.sh is building into $CACHE_DIR; waiting for it"
  flock 9
fi

build_etcd() {
  local out="$1" src="$CACHE_DIR/src/etcd-$ETCD_VERSION"
  rm -rf "$src"; mkdir -p "$src"
  # etcd's server module has relative replace directives, which `go install`
  # refuses; a wrapper module that requires it builds it (replaces of a
  # dependency are ignored).
  ( cd "$src" && go mod init somastack.local/etcd-build >/dev/null 2>&1 &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
    go build -trimpath -o "$out/etcd" go.etcd.io/etcd/server/v3 )
}

# kubernetes_module DIR: writes the wrapper module that builds k8s.io/kubernetes
# commands into DIR and prints the -ldflags that stamp their version.
kubernetes_module() {
  local src="$1"
  rm -rf "$src"; mkdir -p "$src"
  local gomod
  gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
          sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them
  # with ./staging/...; replace each with its own published tag instead
  # (v1.X.Y -> v0.X.Y).
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local staging_tag="v0.${K8S_VERSION#v1.}"
  {
    echo "module somastack.local/kubernetes-build"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_tag"'#p' "$gomod"
  } > "$src/go.mod"
  log "    wrapper module replaces $(grep -c '^replace' "$src/go.mod") staging modules with $staging_tag"
  local v ldflags="-s -w"
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor"
    ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

# build_kubernetes_commands OUT NAME...: builds k8s.io/kubernetes/cmd/NAME.
# -mod=mod lets go build fill in go.sum for the wrapper's dependencies; no
# `go mod tidy` first: it would drop the require (nothing imports it yet).
build_kubernetes_commands() {
  local out="$1"; shift
  local src="$CACHE_DIR/src/kubernetes-$K8S_VERSION" ldflags pkgs=() name
  ldflags=$(kubernetes_module "$src")
  for name in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
  ( cd "$src" && GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}" )
}

build_kubernetes() {
  build_kubernetes_commands "$1" kube-apiserver kube-controller-manager kube-scheduler kubectl
}

# The real nodes' Kubernetes side, from the same module and Go build cache.
build_kubernetes_node() {
  build_kubernetes_commands "$1" kubelet kube-proxy
}

# containerd 2.x (with its CRI plugin) and its runc shim; runc itself and the
# CNI plugins come from Debian (hack/real-nodes.sh installs them).
build_containerd() {
  GOBIN="$1" go install -trimpath -ldflags "-s -w" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
}

build_kwok() {
  GOBIN="$1" go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
}

build_helm() {
  local major="${HELM_VERSION%%.*}"
  GOBIN="$1" go install -trimpath -ldflags "-s -w" "helm.sh/helm/$major/cmd/helm@$HELM_VERSION"
}

steps_total=4
real_nodes_enabled && steps_total=6
install_into "$ETCD_BIN" 1 "etcd $ETCD_VERSION" build_etcd
install_into "$K8S_BIN" 2 "Kubernetes $K8S_VERSION (apiserver, controller-manager, scheduler, kubectl)" build_kubernetes
install_into "$KWOK_BIN" 3 "kwok/kwokctl $KWOK_VERSION" build_kwok
install_into "$HELM_BIN" 4 "helm $HELM_VERSION" build_helm
if real_nodes_enabled; then
  install_into "$K8S_NODE_BIN" 5 "Kubernetes $K8S_VERSION node (kubelet, kube-proxy)" build_kubernetes_node
  install_into "$CONTAINERD_BIN" 6 "containerd $CONTAINERD_VERSION" build_containerd
fi
log "all tools ready under $BIN_DIR"
