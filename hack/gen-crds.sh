#!/usr/bin/env bash
# Regenerates charts/somastack-operator/crds/ from the Rust types.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
rm -f charts/somastack-operator/crds/*.yaml
cargo run --quiet -p somastack-operator -- crd --out-dir charts/somastack-operator/crds
crds=(charts/somastack-operator/crds/*.yaml)
log "wrote ${#crds[@]} CRDs to charts/somastack-operator/crds/"
