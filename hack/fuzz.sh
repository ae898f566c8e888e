#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (docs/development.md, "Fuzzing") for a
# short budget each, prints a table and fails on any crash.
#
#   hack/fuzz.sh                  every target, SOMASTACK_FUZZ_SECONDS (5) each
#   hack/fuzz.sh cron policy      only these targets
#   hack/fuzz.sh --cmin DIR       add the seeds under DIR/<target>/ (fuzz/seeds.py
#                                 writes them) to fuzz/corpus/ and minimise it
#
# SOMASTACK_FUZZ=0 skips. cargo-fuzz (pinned below) is installed into the cache
# when missing, like the other tools; the targets are built once, all together,
# into $SOMASTACK_CACHE/fuzz-target (unoptimized, without a sanitizer: the code
# is safe Rust, and a cold build in release with AddressSanitizer took about
# half an hour on this project's 2-core machine). The committed corpus is only
# read: what a run finds lands in a scratch folder, crashes in fuzz/artifacts/.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
CARGO_FUZZ_BIN="$BIN_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION"
# Without a sanitizer, cargo fuzz passes rustc no unstable flag: the
# workspace's stable toolchain builds the targets (nightly too; a sanitizer,
# cargo fuzz's --sanitizer address, needs nightly).
FUZZ_TOOLCHAIN="${SOMASTACK_FUZZ_TOOLCHAIN:-stable}"
SECONDS_EACH="${SOMASTACK_FUZZ_SECONDS:-5}"
# Longest one input may take before it counts as a hang (seconds, in this
# unoptimized build): the API server gives an admission webhook 10 s in all.
UNIT_TIMEOUT="${SOMASTACK_FUZZ_TIMEOUT:-10}"
FUZZ_DIR="$ROOT/fuzz"
# Its own build folder: the instrumented build shares nothing with the
# workspace's (hack/test.sh exports CARGO_TARGET_DIR for that one).
FUZZ_TARGET_DIR="${SOMASTACK_FUZZ_TARGET_DIR:-$CACHE_DIR/fuzz-target}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
BUILD_FLAGS=(--fuzz-dir "$FUZZ_DIR" --dev --sanitizer none)

if [[ "${SOMASTACK_FUZZ:-1}" == 0 ]]; then
  log "SOMASTACK_FUZZ=0: fuzzing skipped"
  exit 0
fi

cmin_from=""
if [[ "${1:-}" == "--cmin" ]]; then
  cmin_from="${2:?--cmin needs the folder of seeds (fuzz/seeds.py writes one)}"
  shift 2
fi

mapfile -t ALL_TARGETS < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ_DIR/Cargo.toml" | grep -v '^somastack-fuzz$')
TARGETS=("$@")
(( ${#TARGETS[@]} )) || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "no fuzz target $t (there are: ${ALL_TARGETS[*]})"
done

if ! rustup run "$FUZZ_TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  log "installing the Rust toolchain $FUZZ_TOOLCHAIN for cargo fuzz"
  rustup toolchain install "$FUZZ_TOOLCHAIN" --profile minimal
fi

build_cargo_fuzz() {
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$1" --quiet
}
steps_total=1
mkdir -p "$BIN_DIR"
install_into "$CARGO_FUZZ_BIN" 1 "cargo-fuzz $CARGO_FUZZ_VERSION" build_cargo_fuzz
export PATH="$CARGO_FUZZ_BIN/bin:$PATH"
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"

log "building the fuzz targets (${ALL_TARGETS[*]}) into $FUZZ_TARGET_DIR"
start=$(date +%s)
with_heartbeat "building the fuzz targets" cargo "+$FUZZ_TOOLCHAIN" fuzz build "${BUILD_FLAGS[@]}"
log "fuzz targets built in $(( $(date +%s) - start ))s"
BIN="$FUZZ_TARGET_DIR/$TRIPLE/debug"

if [[ -n "$cmin_from" ]]; then
  for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ_DIR/corpus/$t"
    if [[ -d "$cmin_from/$t" ]]; then cp -n "$cmin_from/$t"/* "$FUZZ_DIR/corpus/$t/"; fi
    before=$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)
    cargo "+$FUZZ_TOOLCHAIN" fuzz cmin "${BUILD_FLAGS[@]}" "$t" "$FUZZ_DIR/corpus/$t" -- \
      -timeout="$UNIT_TIMEOUT" >"$FUZZ_DIR/cmin-$t.log" 2>&1 ||
      { tail -20 "$FUZZ_DIR/cmin-$t.log" >&2; die "cargo fuzz cmin $t failed"; }
    rm -f "$FUZZ_DIR/cmin-$t.log"
    log "$t: corpus minimised from $before to $(find "$FUZZ_DIR/corpus/$t" -type f | wc -l) inputs"
  done
  exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rows=()
failed=()
for t in "${TARGETS[@]}"; do
  seeds="$FUZZ_DIR/corpus/$t"
  mkdir -p "$scratch/$t" "$FUZZ_DIR/artifacts/$t"
  out="$scratch/$t.log"
  log "fuzzing $t for ${SECONDS_EACH}s"
  status=0
  # New inputs go to the scratch folder (first); the committed corpus is read only.
  "$BIN/$t" "$scratch/$t" "$seeds" -max_total_time="$SECONDS_EACH" -timeout="$UNIT_TIMEOUT" \
    -print_final_stats=1 -artifact_prefix="$FUZZ_DIR/artifacts/$t/" >"$out" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  corpus=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$out" | tail -1 | cut -d' ' -f2 || true)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -1)
  crashes=0
  if (( status != 0 )); then
    crashes=1
    failed+=("$t")
    log "$t failed (exit $status):"
    # The panic (message and place), a hang or running out of memory.
    grep -m1 -A3 -E "panicked at|ALARM: working on|out-of-memory|ERROR: libFuzzer" "$out" >&2 ||
      tail -20 "$out" >&2
    [[ -n "$artifact" ]] && log "reproduce: $BIN/$t $artifact"
  fi
  rows+=("$(printf '%-10s %10s %7s %14s %7s  %s' "$t" "${runs:-?}" \
    "$(find "$seeds" -type f 2>/dev/null | wc -l)" "${corpus:-?}" "$crashes" "${artifact:--}")")
done

printf '%-10s %10s %7s %14s %7s  %s\n' target runs seeds "corpus/bytes" crashes artifact
printf '%s\n' "${rows[@]}"
if (( ${#failed[@]} )); then
  die "fuzz targets failed: ${failed[*]} (artifacts in fuzz/artifacts/, kept out of git)"
fi
log "${#TARGETS[@]} fuzz targets, ${SECONDS_EACH}s each: no crash"
