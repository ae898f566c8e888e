#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, shellcheck, CRD drift, unit
# tests, and the integration tests against the real local control plane
# (started here when it is not running), then the end-to-end run of the
# operator.
#
#   hack/test.sh                 everything
#   hack/test.sh -- <filter>     only the cargo tests matching <filter>
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

filter=() skip=()
if [[ "${1:-}" == "--" ]]; then shift; filter=("$@"); fi

step() { log "== $1"; }

# A filtered run is one developer's iteration on some tests: the checks
# of the whole tree (formatting, lints, scripts, manifests) are left to the
# full run.
if [[ ${#filter[@]} -eq 0 ]]; then
  step "formatting (cargo fmt --check)"
  cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"

  step "lints (cargo clippy --all-targets -D warnings)"
  cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

  step "shell scripts (shellcheck)"
  command -v shellcheck >/dev/null || die "shellcheck is not installed (Debian: apt-get install shellcheck; .ci/run installs it)"
  # -x follows each script's `source` of hack/lib.sh (and hack/bench's of
  # hack/bench.d/*.sh, which are checked on their own too).
  shellcheck -x hack/*.sh hack/bench hack/bench.d/*.sh hack/chaos .ci/run || die "shellcheck found problems in the scripts above"
fi

step "local control plane"
"$ROOT/hack/cluster-up.sh"
export KUBECONFIG="$LOCAL_KUBECONFIG"
# Namespaces, and the cluster-scoped Capsules and PolicyBundles the tests
# make, left by an interrupted earlier run (all labelled somastack.io/test).
kubectl_local delete namespace -l somastack.io/test=true --wait=false >/dev/null 2>&1 || true
kubectl_local delete capsules.somastack.io,policybundles.somastack.io -l somastack.io/test=true \
  --wait=false >/dev/null 2>&1 || true

if real_nodes_enabled; then
  step "real nodes give the host back (hack/check-host-restored.sh)"
  "$ROOT/hack/check-host-restored.sh"
  step "the project's images (hack/build-image.sh), into the real nodes"
  "$ROOT/hack/build-image.sh"
  "$ROOT/hack/real-nodes.sh" load
  # The real-node tests run these images, pinned by digest as Capsules are.
  SOMASTACK_AGENT_IMAGE=$(image_ref somastack-agent)
  SOMASTACK_PLANNER_IMAGE=$(image_ref somastack-planner)
  export SOMASTACK_AGENT_IMAGE SOMASTACK_PLANNER_IMAGE
else
  # Nothing runs without real nodes: their tests are left out, and say so.
  log "SOMASTACK_REAL_NODES=0: the tests on real pods (real_node::) are skipped"
  skip=(--skip real_node::)
fi

step "checkers (hack/build-checkers.sh: promtool and the other tools tests run, on PATH)"
"$ROOT/hack/build-checkers.sh"
PATH="$("$ROOT/hack/build-checkers.sh" --print):$PATH"
export PATH

if [[ ${#filter[@]} -eq 0 ]]; then
  step "manifest linters (hack/lint-manifests.sh: kube-score on the chart and the provisioned children)"
  "$ROOT/hack/lint-manifests.sh"
fi

step "build (the integration tests run the operator binary)"
cargo build --workspace --bins --locked --quiet

step "the chart, for an operator on this machine (release $OPERATOR_RELEASE)"
install_local_release

step "the operator, for the integration tests (logs: .local/operator-test.log)"
"$TARGET_DIR/debug/somastack-operator" "${LOCAL_OPERATOR_ARGS[@]}" >"$LOCAL_DIR/operator-test.log" 2>&1 &
operator=$!
trap 'kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null' EXIT
wait_operator_ready $operator "$LOCAL_DIR/operator-test.log"
export SOMASTACK_METRICS_URL="http://127.0.0.1:$METRICS_PORT/metrics"

step "unit, drift and integration tests (cargo test)"
results="$LOCAL_DIR/cargo-test.log"
# The skip goes to the test binaries: after the filter's own `--`, if any.
sep=(--); for a in "${filter[@]}"; do [[ "$a" == -- ]] && sep=(); done
cargo test --workspace --locked "${filter[@]}" "${sep[@]}" "${skip[@]}" 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
kill -TERM $operator 2>/dev/null; wait $operator 2>/dev/null || true
trap - EXIT
if [[ $status -ne 0 ]]; then
  log "operator log tail:"; tail -30 "$LOCAL_DIR/operator-test.log" >&2
  die "cargo test failed"
fi
passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$results" | awk '{s+=$1} END {print s+0}')

if [[ ${#filter[@]} -eq 0 ]]; then
  step "fuzz targets (hack/fuzz.sh: ${SOMASTACK_FUZZ_SECONDS:-5} s each; SOMASTACK_FUZZ=0 skips)"
  # fuzz/ is a workspace of its own: formatted and linted like the main one.
  cargo fmt --manifest-path fuzz/Cargo.toml -- --check || die "fuzz/ is not formatted: run cargo fmt --manifest-path fuzz/Cargo.toml"
  (cd fuzz && cargo clippy --all-targets --locked --quiet -- -D warnings)
  "$ROOT/hack/fuzz.sh"
  # Its two replicas are the only operators running then: the suite's is
  # stopped above, and the in-cluster one of hack/run.sh starts below.
  step "faults on purpose, short form (hack/chaos --short: leader kills, API server and etcd stops, no webhook)"
  "$ROOT/hack/chaos" --short --seed "${SOMASTACK_CHAOS_SEED:-7}"
fi

if [[ ${#filter[@]} -eq 0 ]] && real_nodes_enabled; then
  step "end to end (hack/run.sh --check)"
  "$ROOT/hack/run.sh" --check
  step "the walkthrough as written (hack/walkthrough.sh: docs/getting-started.md)"
  "$ROOT/hack/walkthrough.sh"
elif [[ ${#filter[@]} -eq 0 ]]; then
  log "SOMASTACK_REAL_NODES=0: the end-to-end story (hack/run.sh --check) and the walkthrough (hack/walkthrough.sh) need real nodes; skipped"
fi
log "all checks passed"
# The closing line CI reads: the cargo tests counted across every test binary.
echo "tests: ${passed:-0} passed, 0 failed"
