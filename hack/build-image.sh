#!/usr/bin/env bash
# Builds the operator's container image with no daemon and no registry: a
# static release binary (glibc with crt-static; rustup cannot fetch the musl
# target here), then buildah from Debian (vfs storage, chroot isolation) on
# Containerfile, which starts FROM scratch and so pulls nothing. Exports the
# image as an OCI archive and checks it: entrypoint, user, the binary inside is
# the one built, and it runs (`--version`) in the otherwise empty image.
#
#   hack/build-image.sh     build, export, check; prints the sizes
#
# The release build's cache lives outside the clone ($CACHE_DIR/image-target,
# like the tools), so a fresh clone in CI rebuilds only the workspace crates.
# Outputs, all under target/image/ (target/debug is not touched):
#   x86_64-unknown-linux-gnu/release/somastack-operator   the static binary
#   somastack-operator.oci.tar                            the image (OCI archive)
#   containers/                                           buildah's image store
# A second run with no source change rebuilds nothing, gets the same image ID
# and leaves the archive alone (about 3 s).
# Look at the store with:
#   buildah --root target/image/containers/storage --storage-driver vfs images
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

TARGET=x86_64-unknown-linux-gnu
OUT="$ROOT/target/image"
BUILD_DIR="${SOMASTACK_IMAGE_TARGET:-$CACHE_DIR/image-target}"
BIN="$OUT/$TARGET/release/somastack-operator"
ARCHIVE="$OUT/somastack-operator.oci.tar"
STORE="$OUT/containers"
# Own store and driver: vfs needs no overlay or fuse support, and a private
# root never clashes with a system store set up for another driver.
bah() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs "$@"; }

VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")
[[ -n "$VERSION" ]] || die "no version in [workspace.package] of Cargo.toml"
IMAGE="localhost/somastack-operator:$VERSION"

if ! command -v buildah >/dev/null; then
  (( EUID == 0 )) || die "buildah is missing: apt-get install -y --no-install-recommends buildah"
  log "installing buildah (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi

# --target makes RUSTFLAGS apply to the operator only, not to build scripts
# and proc macros (which cannot be static). strip: no symbol table in the image.
log "[1/4] static release binary (cold: minutes; then only what changed)"
with_heartbeat "building the release binary" \
  env RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
  CARGO_TARGET_DIR="$BUILD_DIR" \
  cargo build --release --locked -p somastack-operator --target "$TARGET" \
    --manifest-path "$ROOT/Cargo.toml"
# Into the build context (the only file of target/ it holds).
install -D -m 0755 "$BUILD_DIR/$TARGET/release/somastack-operator" "$BIN"
# Static: no program interpreter, no shared library needed (readelf: binutils,
# which the Rust toolchain's linker already needs).
if readelf -lW "$BIN" | grep -q 'program interpreter' || readelf -d "$BIN" | grep -q NEEDED; then
  die "$BIN is not static: $(readelf -d "$BIN" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
fi
"$BIN" --version >/dev/null || die "$BIN does not run"

# Reproducible: image and file times are the last commit's (or
# SOURCE_DATE_EPOCH), so the same binary gives the same image ID.
REVISION=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REVISION+="-dirty"
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"

log "[2/4] buildah build $IMAGE (vfs, chroot isolation)"
mkdir -p "$STORE"
bah build --quiet --isolation chroot --pull=never --timestamp "$EPOCH" \
  --build-arg "BINARY=${BIN#"$ROOT/"}" --build-arg "VERSION=$VERSION" \
  --build-arg "REVISION=$REVISION" --build-arg "CREATED=$(date -u -d "@$EPOCH" +%FT%TZ)" \
  --iidfile "$OUT/image.id" \
  -f "$ROOT/Containerfile" -t "$IMAGE" "$ROOT" >/dev/null
ID=$(<"$OUT/image.id"); ID=${ID#sha256:}
# vfs keeps a full copy per image: drop the ones a rebuild left untagged.
bah rmi --prune >/dev/null 2>&1 || true

log "[3/4] export to ${ARCHIVE#"$ROOT/"}"
if [[ -f "$ARCHIVE" && "$(cat "$ARCHIVE.id" 2>/dev/null)" == "$ID" ]]; then
  log "archive already holds $ID"
else
  rm -f "$ARCHIVE.tmp" "$ARCHIVE.id"
  bah push --quiet "$IMAGE" "oci-archive:$ARCHIVE.tmp:$IMAGE"
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  echo "$ID" >"$ARCHIVE.id"
fi

log "[4/4] checking the image"
fmt() { bah inspect --type image --format "$1" "$IMAGE"; }
[[ "$(fmt '{{.OCIv1.Config.Entrypoint}}')" == "[/somastack-operator]" ]] || die "unexpected entrypoint"
[[ "$(fmt '{{.OCIv1.Config.Cmd}}')" == "[run]" ]] || die "unexpected cmd"
[[ "$(fmt '{{.OCIv1.Config.User}}')" == "65532:65532" ]] || die "unexpected user"
ctr=$(bah from --quiet --pull=never "$IMAGE")
trap 'bah rm "$ctr" >/dev/null' EXIT
cmp -s "$BIN" "$(bah mount "$ctr")/somastack-operator" || die "the image's binary is not $BIN"
inside=$(bah run --isolation chroot "$ctr" -- /somastack-operator --version) || die "the binary does not run in the image"
log "in the image, as user 65532: $inside"

mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
printf '\n%-40s %s\n' "$IMAGE" "${ID:0:12}"
printf '%-40s %s\n' "binary (static, stripped)" "$(mib "$BIN")" \
  "image, uncompressed (buildah images)" "$(bah images --format '{{.Size}}' "$IMAGE")" \
  "OCI archive (one gzip layer)" "$(mib "$ARCHIVE")"
