#!/usr/bin/env bash
# Build the container image without a container daemon and without a registry of base
# images, hermetically: every Python package comes from a wheelhouse made here, every
# system package from Debian.
#
#   1. wheelhouse  pip wheel of this project and its dependencies (+ setuptools, wheel,
#                  packaging for the build inside) into wheelhouse/ (the build context
#                  folder the Dockerfile installs from with --no-index)
#   2. base        mmdebstrap --variant=minbase bookworm with python3, python3-venv,
#                  ca-certificates, imported into buildah as localhost/psi-python-base
#                  (skipped with PYTHON_IMAGE=... for a base from a registry)
#   3. image       buildah bud --isolation chroot --storage-driver vfs (no daemon, no
#                  user namespaces needed) with --build-arg PYTHON_IMAGE=<the base>
#   4. export      a docker-archive (build/image/pullsecret-injector.tar) that
#                  `ctr -n k8s.io images import` and `docker load` both take
#
# Output: $IMAGE_OUT (default build/image); the image name is $IMAGE (default
# localhost/pullsecret-injector:dev). Idempotent enough to re-run: the base tarball is
# reused while it exists (FORCE_BASE=1 rebuilds it), the wheelhouse is refreshed.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/pullsecret-injector:dev}"
OUT="${IMAGE_OUT:-build/image}"
BASE_IMAGE="localhost/psi-python-base:bookworm"
STORAGE=(--storage-driver vfs)
PYTHON="${PYTHON:-python3}"
EXTRAS="${IMAGE_EXTRAS-gcp,aws,azure}"   # the token providers' SDKs, as the Dockerfile installs them

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
if [[ -z "${PYTHON_IMAGE:-}" ]]; then command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap); fi
if ((${#need[@]})); then
    [[ "$(id -u)" == 0 ]] || die "need root to apt-get install: ${need[*]}"
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p "${OUT}"
t0=$(date +%s)

# ---------------------------------------------------------------- 1. wheelhouse
log "wheelhouse: pip wheel . and its dependencies -> wheelhouse/"
find wheelhouse -name '*.whl' -delete 2>/dev/null || true
target="."
[[ -n "${EXTRAS}" ]] && target=".[${EXTRAS}]"
"${PYTHON}" -m pip wheel --quiet --wheel-dir wheelhouse "${target}" setuptools wheel packaging 2> >(grep -v "^WARNING: Location" >&2)
# the project itself is built from the context sources inside, never taken from here
rm -f wheelhouse/pullsecret_injector-*.whl
log "wheelhouse: $(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1)"

# ---------------------------------------------------------------- 2. base
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
    base_tar="${OUT}/base.tar"
    if [[ "${FORCE_BASE:-0}" == 1 || ! -s "${base_tar}" ]]; then
        log "base: mmdebstrap --variant=minbase bookworm (python3, python3-venv, ca-certificates)"
        mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-venv,python-is-python3,ca-certificates \
            bookworm "${base_tar}.part"
        mv "${base_tar}.part" "${base_tar}"
    fi
    log "base: importing ${base_tar} as ${BASE_IMAGE}"
    ctr=$(buildah "${STORAGE[@]}" from scratch)
    trap 'buildah "${STORAGE[@]}" rm "${ctr}" >/dev/null 2>&1 || true' EXIT
    buildah "${STORAGE[@]}" add "${ctr}" "${base_tar}" / >/dev/null
    buildah "${STORAGE[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/sh "${ctr}"
    buildah "${STORAGE[@]}" commit --quiet --rm "${ctr}" "${BASE_IMAGE}" >/dev/null
    trap - EXIT
    PYTHON_IMAGE="${BASE_IMAGE}"
fi

# ---------------------------------------------------------------- 3. image
log "image: buildah bud ${IMAGE} FROM ${PYTHON_IMAGE}"
buildah "${STORAGE[@]}" bud --quiet --isolation chroot --pull-never \
    --build-arg PYTHON_IMAGE="${PYTHON_IMAGE}" \
    --build-arg VERSION="$("${PYTHON}" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --iidfile "${OUT}/image.id" -t "${IMAGE}" . >/dev/null
# by ID from here on: another build on this machine (shared storage) may re-tag ${IMAGE} meanwhile
iid=$(cat "${OUT}/image.id")

# ---------------------------------------------------------------- 4. export
archive="${OUT}/pullsecret-injector.tar"
rm -f "${archive}"
buildah "${STORAGE[@]}" push --quiet "${iid}" "docker-archive:${archive}:${IMAGE}" >/dev/null
# only the working container made here is removed: the vfs storage is shared with any other
# buildah user on the machine (a concurrent build), so never `rm --all`
size_ctr=$(buildah "${STORAGE[@]}" from --quiet "${iid}")
venv_size=$(buildah "${STORAGE[@]}" run --isolation chroot "${size_ctr}" du -sm /opt/venv 2>/dev/null | cut -f1 || echo "?")
buildah "${STORAGE[@]}" rm "${size_ctr}" >/dev/null 2>&1 || true
image_mb=$(( $(stat -c %s "${archive}") / 1024 / 1024 ))
base_mb=$(buildah "${STORAGE[@]}" inspect --type image --format '{{.ImageAnnotations}}' "${PYTHON_IMAGE}" >/dev/null 2>&1; du -sm "${OUT}/base.tar" 2>/dev/null | cut -f1 || echo "?")
cat > "${OUT}/image.env" <<ENV
IMAGE=${IMAGE}
ARCHIVE=${archive}
IMAGE_MB=${image_mb}
BASE_MB=${base_mb}
VENV_MB=${venv_size}
SECONDS_TOTAL=$(( $(date +%s) - t0 ))
ENV
log "image: ${archive} (${image_mb} MB as a docker-archive; base ${base_mb} MB; /opt/venv ${venv_size} MB) in $(( $(date +%s) - t0 )) s"
