#!/usr/bin/env bash
# Build the Kubernetes binaries the e2e tests need (etcd, kube-apiserver,
# kube-controller-manager for the control plane; kubelet for the real node) from Debian packages.
#
#   etcd                     <- Debian package etcd-server (3.4)
#   kube-apiserver,          <- Debian source package kubernetes (1.20.2, with vendor/),
#   kube-controller-manager,    built with Debian's golang-go the way debian/rules does
#   kubelet
#
# Only the binaries that are missing (or do not run) are built: adding kubelet to an existing
# cache costs one `make WHAT=cmd/kubelet` (~35 s from the cached tree and Go build cache).
#
# Output: $KUBE_ASSETS, default ~/.cache/pullsecret-injector/kube-assets.
# Source and Go build cache: ~/.cache/pullsecret-injector/kube-src (override: KUBE_SRC_CACHE).
# Idempotent: exits at once when the output dir already holds working binaries.
# FORCE=1 rebuilds everything. The first build takes 10+ minutes on 2 cores.
set -euo pipefail

CACHE_ROOT="${HOME}/.cache/pullsecret-injector"
ASSETS="${KUBE_ASSETS:-${CACHE_ROOT}/kube-assets}"
SRC_CACHE="${KUBE_SRC_CACHE:-${CACHE_ROOT}/kube-src}"
BINS=(etcd kube-apiserver kube-controller-manager kubelet)
#: built from the kubernetes source tree (etcd is copied from the Debian package)
GO_BINS=(kube-apiserver kube-controller-manager kubelet)
APT_PKGS=(etcd-server golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev make)
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2

log() { printf '[build-kube-assets] %s\n' "$*" >&2; }
die() { printf '[build-kube-assets] ERROR: %s\n' "$*" >&2; exit 1; }

bin_ok() {
    [[ -x "${ASSETS}/$1" ]] && "${ASSETS}/$1" --version >/dev/null 2>&1
}

assets_ok() {
    local b
    for b in "${BINS[@]}"; do
        bin_ok "${b}" || return 1
    done
}

print_result() {
    local b
    log "binaries are in ${ASSETS}:"
    for b in "${BINS[@]}"; do
        printf '  %-26s %s\n' "${b}" "$("${ASSETS}/${b}" --version 2>&1 | head -n1)" >&2
    done
    log "run the e2e tests with: KUBE_ASSETS=${ASSETS} .venv/bin/pytest tests/e2e -v"
}

if [[ "${FORCE:-0}" != 1 ]] && assets_ok; then
    log "already built, nothing to do (FORCE=1 to rebuild)"
    print_result
    exit 0
fi

# ---------------------------------------------------------------- prerequisites
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install: ${APT_PKGS[*]}"
    SUDO=(sudo)
fi
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs a Debian (bookworm) system"

# deb-src entries: a copy of the system's binary sources with Types: deb-src
SRC_LIST=/etc/apt/sources.list.d/debian-src.sources
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        log "enabling deb-src in ${SRC_LIST}"
        sed -E 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
            | "${SUDO[@]}" tee "${SRC_LIST}" >/dev/null
    elif [[ -f /etc/apt/sources.list ]]; then
        SRC_LIST=/etc/apt/sources.list.d/debian-src.list
        log "enabling deb-src in ${SRC_LIST}"
        sed -nE 's/^deb (.*)$/deb-src \1/p' /etc/apt/sources.list | "${SUDO[@]}" tee "${SRC_LIST}" >/dev/null
    else
        die "no /etc/apt/sources.list.d/debian.sources nor /etc/apt/sources.list to derive deb-src entries from"
    fi
fi

log "apt-get update"
"${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null || die "apt-get update failed (no access to the Debian mirror?)"
log "apt-get install ${APT_PKGS[*]}"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${APT_PKGS[@]}" \
    >/dev/null || die "cannot install prerequisites: ${APT_PKGS[*]}"
[[ -x /usr/bin/etcd ]] || die "package etcd-server installed but /usr/bin/etcd is missing"
[[ -f "${REFLECT2_SRC}/go_above_118.go" ]] \
    || die "${REFLECT2_SRC} (>= 1.0.2, from golang-github-modern-go-reflect2-dev) not found"

# ---------------------------------------------------------------- source
mkdir -p "${SRC_CACHE}" "${ASSETS}"
SRC_DIR="$(find "${SRC_CACHE}" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n1)"
if [[ -z "${SRC_DIR}" || ! -f "${SRC_DIR}/debian/rules" ]]; then
    log "apt-get source kubernetes (into ${SRC_CACHE})"
    (cd "${SRC_CACHE}" && apt-get source -q kubernetes >"${SRC_CACHE}/apt-source.log" 2>&1) \
        || { tail -n 20 "${SRC_CACHE}/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
    SRC_DIR="$(find "${SRC_CACHE}" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | sort | tail -n1)"
    [[ -n "${SRC_DIR}" ]] || die "apt-get source kubernetes produced no kubernetes-* directory"
fi
log "source tree: ${SRC_DIR}"

# The vendored reflect2 1.0.1 breaks at run time on Go >= 1.18 (it panics in
# json-iterator); use Debian's 1.0.2, which has go_above_118.go.
VENDOR_R2="${SRC_DIR}/vendor/github.com/modern-go/reflect2"
if [[ ! -f "${VENDOR_R2}/go_above_118.go" ]]; then
    log "replacing vendored modern-go/reflect2 with ${REFLECT2_SRC}"
    rm -rf "${VENDOR_R2}"
    mkdir -p "${VENDOR_R2}"
    cp -a "${REFLECT2_SRC}/." "${VENDOR_R2}/"
fi

# ---------------------------------------------------------------- build (as debian/rules does)
cd "${SRC_DIR}"
mkdir -p .go/src/k8s.io
[[ -L .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
export GOPATH="${SRC_DIR}/.go"
export PATH="/usr/lib/go/bin:${PATH}"
export CGO_ENABLED=0
export GO111MODULE=off
export GOFLAGS=""
export GOTOOLCHAIN=local
# `go` (Debian's golang-go) must be the one found
go version >/dev/null 2>&1 || die "go not found after installing golang-go"
TARGETS=()
for b in "${GO_BINS[@]}"; do
    if [[ "${FORCE:-0}" == 1 ]] || ! bin_ok "${b}"; then
        TARGETS+=("cmd/${b}")
    fi
done
if (( ${#TARGETS[@]} > 0 )); then
    log "building ${TARGETS[*]} with $(go version) (10+ minutes on 2 cores for the control plane, ~35 s for kubelet alone)"
    start=$(date +%s)
    nice -n 10 make WHAT="${TARGETS[*]}" || die "make WHAT=\"${TARGETS[*]}\" failed in ${SRC_DIR}"
    log "build took $(( $(date +%s) - start )) s"
    for t in "${TARGETS[@]}"; do
        b="${t#cmd/}"
        [[ -x "_output/bin/${b}" ]] || die "build finished but _output/bin/${b} is missing"
        install -m 0755 "_output/bin/${b}" "${ASSETS}/${b}"
    done
fi
if [[ "${FORCE:-0}" == 1 ]] || ! bin_ok etcd; then install -m 0755 /usr/bin/etcd "${ASSETS}/etcd"; fi

assets_ok || die "binaries in ${ASSETS} do not run (--version failed)"
print_result
