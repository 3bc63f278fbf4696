#!/usr/bin/env bash
# Builds the mtproxy image: our wheel plus its dependency wheels go into the build context, so
# `docker build` itself needs no network. With --local-base it first debootstraps a minimal Debian
# (this machine's release and mirror, python3 only) and `docker import`s it, for hosts that cannot reach an
# image registry; that base is cached and only rebuilt when missing (or with --rebuild-base).
#
#   deploy/docker/build-image.sh [--local-base] [--rebuild-base] [--base IMAGE] [--tag TAG]
#                                [--wheel FILE] [--constraints FILE]
#
# Our wheel is built from the checkout this script lives in, or given with --wheel (the setup wizard passes
# a wheel of the installed package: this script and the Dockerfile are package data, mtproxy/templates/docker).
# Prints the image tag on the last line of stdout. Progress goes to stderr.
set -euo pipefail

# deploy/docker/ holds symlinks to these files; the real ones sit in src/mtproxy/templates/docker/.
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
dockerfile="$here/Dockerfile"
repo=$(cd "$here/../../../.." && pwd)
wheel=""
constraints=""
tag="mtproxy:local"
base="python:3.11-slim-bookworm"
local_base=0
rebuild_base=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --local-base) local_base=1 ;;
    --rebuild-base) local_base=1; rebuild_base=1 ;;
    --base) base="$2"; shift ;;
    --tag) tag="$2"; shift ;;
    --wheel) wheel="$2"; shift ;;
    --constraints) constraints="$2"; shift ;;
    -h|--help) usage ;;
    *) echo "build-image: unknown argument $1" >&2; usage ;;
  esac
  shift
done
if [ -z "$wheel" ]; then
  if [ ! -f "$repo/pyproject.toml" ]; then
    echo "build-image: $here is not inside a checkout — pass --wheel FILE (mtproxy-setup does)" >&2
    exit 2
  fi
  constraints="${constraints:-$repo/constraints.txt}"
fi

log() { echo "build-image: $*" >&2; }
now() { date +%s; }

# The release and mirror apt already uses here, so debootstrap goes where apt is allowed to go.
debian_codename() { . /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"; }
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $2 !~ /security/ && $0 ~ /debian/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_local_base() {
  local codename mirror image rootfs started
  codename=$(debian_codename)
  mirror=$(debian_mirror)
  # The suffix names the recipe: bump it when this function changes, so cached bases are rebuilt.
  image="mtproxy-base:$codename-2"
  if [ "$rebuild_base" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
    log "base $image exists (cached); --rebuild-base to rebuild"
    base="$image"
    return
  fi
  started=$(now)
  rootfs=$(mktemp -d /var/tmp/mtproxy-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $codename from $mirror (minbase + python3)"
  # minbase + python3 (not python3-minimal: asyncio and friends live in libpython3.x-stdlib).
  debootstrap --variant=minbase --include=python3 --components=main \
    "$codename" "$rootfs" "$mirror" >&2
  # What a runtime image never uses: apt itself, docs, man pages, locales, glibc's iconv modules, apt's
  # caches and lists. Python's compiled stdlib (__pycache__) stays: the root filesystem is read-only at
  # run time, and without it every `mtproxy healthcheck` would recompile its imports (~0.8 s of CPU).
  chroot "$rootfs" dpkg --purge apt libapt-pkg6.0 debian-archive-keyring gpgv >&2
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/usr/lib/x86_64-linux-gnu/gconv "$rootfs"/var/cache/apt \
    "$rootfs"/var/lib/apt "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$image" >&2
  rm -rf "$rootfs"
  trap - EXIT
  log "base $image built in $(( $(now) - started )) s"
  base="$image"
}

build_context() {
  local ctx="$1" pyver
  mkdir -p "$ctx/wheels"
  if [ -n "$wheel" ]; then
    cp "$wheel" "$ctx/wheels/"
  else
    log "building the mtproxy wheel"
    python3 -m pip wheel -q --no-deps -w "$ctx/wheels" "$repo" >&2
  fi
  # The image's Python decides the wheel ABI; both bases are CPython 3.11 on glibc >= 2.36. Our wheel is
  # tagged linux_x86_64 when it carries the native AES library, built here by cargo (docs/engine.md).
  pyver=$(docker run --rm --network none --entrypoint python3 "$base" -c \
    'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  log "downloading dependency wheels for CPython $pyver (manylinux, x86_64)"
  # pip does not widen --platform to older glibc tags by itself: list every manylinux tag glibc 2.36
  # (bookworm) accepts.
  local platforms=() minor
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  python3 -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform linux_x86_64 \
    ${constraints:+-c "$constraints"} -d "$ctx/wheels" \
    "$(ls "$ctx"/wheels/mtproxy-*.whl)" pip >&2
  cp "$dockerfile" "$ctx/Dockerfile"
}

if [ "$local_base" = 1 ]; then
  build_local_base
fi

ctx=$(mktemp -d /var/tmp/mtproxy-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
started=$(now)
build_context "$ctx"
log "docker build $tag FROM $base"
DOCKER_BUILDKIT=0 docker build -q --rm --force-rm --build-arg "BASE_IMAGE=$base" -t "$tag" "$ctx" >&2
# Untagged leftovers of our own builds only: build stages, and images a rebuild took the tag from.
docker image prune -f --filter label=mtproxy.stage >/dev/null
log "image $tag built in $(( $(now) - started )) s, $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
echo "$tag"
