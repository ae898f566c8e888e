#!/usr/bin/env bash
# Signs a Capsule manifest with openssl, the way a publisher would, and
# prints the manifest with spec.signature filled in.
#
#   hack/sign-capsule.sh [--image REF] CAPSULE.yaml PRIVATE_KEY.pem KEY_ID > signed.yaml
#
# --image sets spec.image first (a release pipeline signs the digest it just
# built: hack/run.sh signs the example over the agent image it built).
#
# The key decides the algorithm: an EC P-256 key signs ecdsa-p256-sha256
# (openssl dgst -sha256 -sign), an Ed25519 key signs ed25519
# (openssl pkeyutl -sign -rawin). The signed bytes are the canonical payload
# (docs/signing.md), printed by `somastack-operator payload`.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"
image=""
if [[ "${1:-}" == "--image" ]]; then image="${2:-}"; shift 2 || true; fi
[[ $# -eq 3 ]] || die "usage: $0 [--image REF] CAPSULE.yaml PRIVATE_KEY.pem KEY_ID"
manifest="$1" key="$2" key_id="$3"
cd "$ROOT"
cargo build --quiet -p somastack-operator
payload=$(mktemp) unsigned=$(mktemp); trap 'rm -f "$payload" "$unsigned"' EXIT
if [[ -n "$image" ]]; then
  [[ "$image" == *@sha256:* ]] || die "--image must be pinned by digest (...@sha256:...): $image"
  grep -q '^  image: ' "$manifest" || die "$manifest has no spec.image line to replace"
  sed "s|^  image: .*|  image: $image|" "$manifest" > "$unsigned"
else
  cp "$manifest" "$unsigned"
fi
manifest="$unsigned"
"$TARGET_DIR/debug/somastack-operator" payload -f "$manifest" > "$payload"
if openssl pkey -in "$key" -noout -text 2>/dev/null | grep -q 'ED25519'; then
  algorithm=ed25519
  value=$(openssl pkeyutl -sign -inkey "$key" -rawin -in "$payload" | base64 -w0)
else
  algorithm=ecdsa-p256-sha256
  value=$(openssl dgst -sha256 -sign "$key" "$payload" | base64 -w0)
fi
# Drop any previous signature block, then append the new one under spec.
awk '/^  signature:/{skip=1; next} skip && /^    /{next} {skip=0; print}' "$manifest"
printf '  signature:\n    keyId: %s\n    algorithm: %s\n    value: %s\n' "$key_id" "$algorithm" "$value"
