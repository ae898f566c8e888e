#!/usr/bin/env bash
# Builds, from pinned Go modules through the module proxy, the checkers the
# tests run against the project's own files (not the cluster's tools, which
# hack/build-tools.sh builds): promtool, which checks and unit-tests the
# chart's alerting rules (tests/tests/alerts.rs), and kube-score, which
# hack/lint-manifests.sh runs on the rendered chart and on the children the
# operator provisions. Results are cached outside
# the repository (see hack/lib.sh) like the cluster's tools; a second run
# finds them and returns at once.
#
#   hack/build-checkers.sh            build whatever is missing
#   hack/build-checkers.sh --print    print the PATH entries to use the binaries
#
# One build function per tool, each called once through install_into at the
# bottom: add a tool by adding its version to hack/lib.sh, a build function,
# an install_into line and its directory to --print.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

# kube-score (github.com/zegl/kube-score): pinned here, beside the only
# script that runs it (hack/lint-manifests.sh). kube-linter is not built:
# the module proxy answers 403 Forbidden for golang.stackrox.io/kube-linter
# and github.com/stackrox/kube-linter (docs/operations.md, "Linters").
KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"
KUBE_SCORE_BIN="$BIN_DIR/kube-score-$KUBE_SCORE_VERSION"

if [[ "${1:-}" == "--print" ]]; then
  echo "$PROMTOOL_BIN:$VERDICTS_BIN:$KUBE_SCORE_BIN"; exit 0
fi

command -v go >/dev/null || die "go is not installed (the project needs Go >= 1.26)"
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
mkdir -p "$BIN_DIR" "$CACHE_DIR/src"
# One build at a time per cache (a lock of its own: hack/build-tools.sh may be
# building the cluster's tools meanwhile); a second run waits here, then finds
# the first one's results.
exec 9>"$CACHE_DIR/.build-checkers.lock"
if ! flock -n 9; then
  log "another hack/build-checkers.sh is building into $CACHE_DIR; waiting for it"
  flock 9
fi


# promtool from github.com/prometheus/prometheus (v0.3XX.Y is Prometheus
# 3.XX.Y). Its go.mod has replace directives, which `go install` refuses; a
# wrapper module that requires it builds it (replaces of a dependency are
# ignored), as for etcd in hack/build-tools.sh. -tags remove_all_sd leaves
# out the service-discovery plugins (AWS, Azure, GCE, Kubernetes, ...), which
# promtool needs only for `check config` of configurations using them, not
# for `check rules` or `test rules`: most of the module's dependencies.
build_promtool() {
  local out="$1" src="$CACHE_DIR/src/prometheus-$PROMETHEUS_VERSION" v=github.com/prometheus/common/version
  # v0.316.0 -> 3.16.0, what `promtool --version` reports.
  local release="${PROMETHEUS_VERSION#v0.}"; release="${release:0:1}.${release:1}"
  local ldflags="-s -w -X $v.Version=$release -X $v.Branch=HEAD -X $v.Revision=$PROMETHEUS_VERSION"
  rm -rf "$src"; mkdir -p "$src"
  ( cd "$src" && go mod init somastack.local/prometheus-build >/dev/null 2>&1 &&
    go get "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" >/dev/null 2>&1 &&
    GOFLAGS="$GOFLAGS -mod=mod" go build -trimpath -tags remove_all_sd -ldflags "$ldflags" \
      -o "$out/promtool" github.com/prometheus/prometheus/cmd/promtool )
}

# verdicts (hack/verdicts): what kstatus (sigs.k8s.io/cli-utils, as Flux
# reads health) and Argo CD's health scripts (gopher-lua, the interpreter Argo
# CD embeds) make of our objects; tests/tests/gitops.rs runs it. Its go.sum
# pins every module.
build_verdicts() {
  local out="$1"
  ( cd "$ROOT/hack/verdicts" && go build -trimpath -ldflags "-s -w" -o "$out/verdicts" . )
}

# kube-score: no replace directives, so `go install` of the pinned version
# (its go.sum pins every dependency); the version is stamped as its own
# release builds do, so `kube-score version` names it.
build_kube_score() {
  local out="$1"
  GOBIN="$out" go install -trimpath \
    -ldflags "-s -w -X main.version=${KUBE_SCORE_VERSION#v} -X main.commit=$KUBE_SCORE_VERSION" \
    "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
}

steps_total=3
install_into "$PROMTOOL_BIN" 1 "promtool (Prometheus module $PROMETHEUS_VERSION)" build_promtool
install_into "$VERDICTS_BIN" 2 "verdicts (hack/verdicts)" build_verdicts
install_into "$KUBE_SCORE_BIN" 3 "kube-score $KUBE_SCORE_VERSION" build_kube_score
log "all checkers ready under $BIN_DIR"
