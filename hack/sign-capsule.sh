#!/usr/bin/env bash
# Signs a Capsule manifest, the way a publisher would, and prints the
# manifest with spec.signature filled in: `kubectl soma capsule sign`
# (docs/kubectl-soma.md) does the signing; this script keeps the manifest's
# leading comment lines (the `# kubectl-as:` line hack/run.sh applies it
# with), which a YAML round trip drops.
#
#   hack/sign-capsule.sh [--image REF] CAPSULE.yaml PRIVATE_KEY.pem KEY_ID > signed.yaml
#
# --image sets spec.image first (a release pipeline signs the digest it just
# built: hack/run.sh signs the example over the agent image it built).
#
# The key (PKCS#8 PEM, as `openssl genpkey` writes it) decides the
# algorithm: EC P-256 signs ecdsa-p256-sha256, Ed25519 signs ed25519. The
# signed bytes are the canonical payload (docs/signing.md), printed by
# `kubectl soma capsule payload`.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
image=()
if [[ "${1:-}" == "--image" ]]; then image=(--image "${2:-}"); shift 2 || true; fi
[[ $# -eq 3 ]] || die "usage: $0 [--image REF] CAPSULE.yaml PRIVATE_KEY.pem KEY_ID"
manifest="$1" key="$2" key_id="$3"
cd "$ROOT"
cargo build --quiet -p kubectl-soma
signed=$("$TARGET_DIR/debug/kubectl-soma" capsule sign -f "$manifest" --key "$key" --key-id "$key_id" "${image[@]}")
awk '/^#/ { print; next } { exit }' "$manifest"
printf '%s\n' "$signed"
