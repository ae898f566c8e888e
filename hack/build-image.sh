#!/usr/bin/env bash
# Builds the project's container images with no daemon and no registry: the
# operator (Containerfile), the reference agent (Containerfile.agent) and the
# reference planner (Containerfile.planner). Static release binaries (glibc
# with crt-static; rustup cannot fetch the musl target here), then buildah from
# Debian (vfs storage, chroot isolation) on Containerfiles that start FROM
# scratch and so pull nothing. Exports each image as an OCI archive and checks it:
# entrypoint, user, the binary inside is the one built, and it runs
# (`--version`) in the otherwise empty image.
#
#   hack/build-image.sh     build, export, check; prints the sizes
#
# The release build's cache lives outside the clone ($CACHE_DIR/image-target,
# like the tools), so a fresh clone in CI rebuilds only the workspace crates.
# Outputs, all under target/image/ (target/debug is not touched), for each of
# somastack-operator, somastack-agent, somastack-planner (NAME):
#   x86_64-unknown-linux-gnu/release/NAME   the static binary
#   NAME.oci.tar                            the image (OCI archive)
#   containers/                             buildah's image store
# A second run with no source change rebuilds nothing, gets the same image IDs
# and leaves the archives alone.
# Look at the store with:
#   buildah --root target/image/containers/storage --storage-driver vfs images
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$0")/lib.sh"

# --ref NAME: the reference of an image built before (localhost/NAME@sha256:...),
# the one to sign a Capsule over (docs/getting-started.md).
if [[ "${1:-}" == "--ref" ]]; then
  ref=$(image_ref "${2:-}")
  [[ -n "$ref" ]] || die "no image ${2:-} in target/image: run hack/build-image.sh first"
  echo "$ref"; exit 0
fi

TARGET=x86_64-unknown-linux-gnu
OUT="$ROOT/target/image"
BUILD_DIR="${SOMASTACK_IMAGE_TARGET:-$CACHE_DIR/image-target}"
STORE="$OUT/containers"
# Own store and driver: vfs needs no overlay or fuse support, and a private
# root never clashes with a system store set up for another driver.
bah() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver vfs "$@"; }

VERSION="$IMAGE_VERSION"
[[ -n "$VERSION" ]] || die "no version in [workspace.package] of Cargo.toml"

# name  Containerfile  default command
IMAGES=(
  "somastack-operator Containerfile run"
  "somastack-agent Containerfile.agent auto"
  "somastack-planner Containerfile.planner serve"
)

if ! command -v buildah >/dev/null; then
  (( EUID == 0 )) || die "buildah is missing: apt-get install -y --no-install-recommends buildah"
  log "installing buildah (Debian package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah >/dev/null
fi

# One build for every binary (shared dependencies compile once). --target
# makes RUSTFLAGS apply to the binaries only, not to build scripts and proc
# macros (which cannot be static). strip: no symbol table in the images.
log "[1/4] static release binaries (cold: minutes; then only what changed)"
packages=()
for spec in "${IMAGES[@]}"; do packages+=(-p "${spec%% *}"); done
with_heartbeat "building the release binaries" \
  env RUSTFLAGS='-C target-feature=+crt-static' CARGO_PROFILE_RELEASE_STRIP=symbols \
  CARGO_TARGET_DIR="$BUILD_DIR" \
  cargo build --release --locked "${packages[@]}" --target "$TARGET" \
    --manifest-path "$ROOT/Cargo.toml"

# Reproducible: image and file times are the last commit's (or
# SOURCE_DATE_EPOCH), so the same binary gives the same image ID.
REVISION=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || REVISION+="-dirty"
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
mkdir -p "$STORE"
mib() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
summary=()

for spec in "${IMAGES[@]}"; do
  read -r name containerfile cmd <<<"$spec"
  image="localhost/$name:$VERSION"
  bin="$OUT/$TARGET/release/$name"
  archive="$OUT/$name.oci.tar"
  # Into the build context (the only files of target/ it holds).
  install -D -m 0755 "$BUILD_DIR/$TARGET/release/$name" "$bin"
  # Static: no program interpreter, no shared library needed (readelf:
  # binutils, which the Rust toolchain's linker already needs).
  if readelf -lW "$bin" | grep -q 'program interpreter' || readelf -d "$bin" | grep -q NEEDED; then
    die "$bin is not static: $(readelf -d "$bin" | grep NEEDED | tr -s ' ' | tr '\n' ' ')"
  fi
  "$bin" --version >/dev/null || die "$bin does not run"

  log "[2/4] buildah build $image (vfs, chroot isolation)"
  bah build --quiet --isolation chroot --pull=never --timestamp "$EPOCH" \
    --build-arg "BINARY=${bin#"$ROOT/"}" --build-arg "VERSION=$VERSION" \
    --build-arg "REVISION=$REVISION" --build-arg "CREATED=$(date -u -d "@$EPOCH" +%FT%TZ)" \
    --iidfile "$OUT/$name.image.id" \
    -f "$ROOT/$containerfile" -t "$image" "$ROOT" >/dev/null
  id=$(<"$OUT/$name.image.id"); id=${id#sha256:}

  log "[3/4] export to ${archive#"$ROOT/"}"
  if [[ -f "$archive" && "$(cat "$archive.id" 2>/dev/null)" == "$id" ]]; then
    log "archive already holds $id"
  else
    rm -f "$archive.tmp" "$archive.id"
    bah push --quiet "$image" "oci-archive:$archive.tmp:$image"
    mv "$archive.tmp" "$archive"
    echo "$id" >"$archive.id"
  fi

  log "[4/4] checking $image"
  fmt() { bah inspect --type image --format "$1" "$image"; }
  [[ "$(fmt '{{.OCIv1.Config.Entrypoint}}')" == "[/$name]" ]] || die "$image: unexpected entrypoint"
  [[ "$(fmt '{{.OCIv1.Config.Cmd}}')" == "[$cmd]" ]] || die "$image: unexpected cmd"
  [[ "$(fmt '{{.OCIv1.Config.User}}')" == "65532:65532" ]] || die "$image: unexpected user"
  ctr=$(bah from --quiet --pull=never "$image")
  cmp -s "$bin" "$(bah mount "$ctr")/$name" || { bah rm "$ctr" >/dev/null; die "$image: its binary is not $bin"; }
  inside=$(bah run --isolation chroot "$ctr" -- "/$name" --version) ||
    { bah rm "$ctr" >/dev/null; die "$image: the binary does not run in the image"; }
  bah rm "$ctr" >/dev/null
  log "in $image, as user 65532: $inside"
  summary+=("$image ${id:0:12} $(mib "$bin" | tr ' ' _) $(mib "$archive" | tr ' ' _)")
done
# vfs keeps a full copy per image: drop the ones a rebuild left untagged.
bah rmi --prune >/dev/null 2>&1 || true

printf '\n%-38s %-13s %-22s %s\n' IMAGE ID "BINARY (static)" "OCI ARCHIVE (gzip)"
for line in "${summary[@]}"; do
  read -r image id b a <<<"$line"
  printf '%-38s %-13s %-22s %s\n' "$image" "$id" "${b//_/ }" "${a//_/ }"
done
