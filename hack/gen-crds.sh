#!/usr/bin/env bash
# Regenerates charts/somastack-operator/crds/ from the Rust types.
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
rm -f charts/somastack-operator/crds/*.yaml
cargo run --quiet -p somastack-operator -- crd --out-dir charts/somastack-operator/crds
log "wrote $(ls charts/somastack-operator/crds | wc -l) CRDs to charts/somastack-operator/crds/"
