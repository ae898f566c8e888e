#!/usr/bin/env bash
# Regenerates charts/somastack-operator/crds/ and docs/api.md (the API
# reference) from the Rust types.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
rm -f charts/somastack-operator/crds/*.yaml
cargo run --quiet -p somastack-operator -- crd --out-dir charts/somastack-operator/crds --api-doc docs/api.md
crds=(charts/somastack-operator/crds/*.yaml)
log "wrote ${#crds[@]} CRDs to charts/somastack-operator/crds/ and their reference to docs/api.md"
