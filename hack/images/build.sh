#!/usr/bin/env bash
# Build the container images a real kubelet node runs, without a registry.
#
#   hack/images/build.sh [--no-verify] [IMAGE...]      IMAGE: pause debian-python tritonserver-cpu turnpike
#   hack/images/build.sh --plan [IMAGE...]             print the refs, keys and whether each is cached
#
# Prints progress and step times on stderr and, on stdout, the path of a JSON
# file listing every image built or found:
#   [{"image": "pause", "name": "turnpike.local/pause:3.10-<key12>",
#     "archive": "/root/.cache/turnpike/images/pause-<key>/image.tar", "key": "<sha256>"}, ...]
# Each archive is a docker-archive (`ctr -n k8s.io images import` reads its RepoTags). Every
# ref carries its key's first 12 hex digits, so a ref present in containerd is that content.
#
# Images are cached by content under ${TURNPIKE_CACHE:-$HOME/.cache/turnpike}/images/<image>-<key>/,
# the key being a sha256 of every input of that image (and of the image it is built FROM).
# A call with unchanged inputs builds nothing and runs no buildah. Builds hold a flock, go into
# a temporary directory and are renamed into place, and (unless --no-verify) each image is run
# once from its archive (hack/images/smoke.py) before it is published.
#
# Environment: TURNPIKE_CACHE, TURNPIKE_DEBIAN_SUITE (bookworm), TURNPIKE_DEBIAN_MIRROR
# (http://deb.debian.org/debian), TURNPIKE_VENV (the repo's .venv: where the nvidia-pytriton
# wheel is found installed; otherwise pip downloads it), TURNPIKE_IMAGES_KEEP (3: cached
# versions kept per image). Needs root, buildah, debootstrap, gcc, jq; the checks need runc,
# GNU tar, ip (iproute2) and ssh-keygen.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${TURNPIKE_CACHE:-$HOME/.cache/turnpike}/images
SUITE=${TURNPIKE_DEBIAN_SUITE:-bookworm}
MIRROR=${TURNPIKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV=${TURNPIKE_VENV:-$REPO/.venv}
KEEP=${TURNPIKE_IMAGES_KEEP:-3}
# Bump when this script changes how an image is put together (its inputs are hashed anyway).
RECIPE=1
REGISTRY=turnpike.local
PAUSE_VERSION=3.10
TRITON_VERSION=2.51        # the Triton release inside the nvidia-pytriton wheel pinned below
PYTHON_ABI=3.11            # Debian bookworm's python3; picks the wheel's backend stub

VERIFY=1
PLAN=0
WANT=()
for arg in "$@"; do
    case $arg in
        --no-verify) VERIFY=0 ;;
        --plan) PLAN=1 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        pause | debian-python | tritonserver-cpu | turnpike) WANT+=("$arg") ;;
        *) echo "build.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
((${#WANT[@]})) || WANT=(pause debian-python tritonserver-cpu turnpike)

now_us() { echo "${EPOCHREALTIME/./}"; }
since() { local d=$(($(now_us) - $1)); printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10)); }
T0=$(now_us)
log() { printf '[images %6ss] %s\n' "$(since "$T0")" "$*" >&2; }
LOGS=${TURNPIKE_CACHE:-$HOME/.cache/turnpike}/images/logs
# step NAME CMD...: run CMD (its output into $LOGS/<name>.log, shown if it fails), print its time.
step() {
    local name=$1 start rc=0 file
    shift
    file=$LOGS/$(printf '%s' "$name" | tr -c 'A-Za-z0-9._-' '_').log
    mkdir -p "$LOGS"
    start=$(now_us)
    log "$name ..."
    "$@" >"$file" 2>&1 || rc=$?
    if ((rc)); then
        tail -n 40 "$file" | sed 's/^/    | /' >&2
        log "$name: FAILED (exit $rc) after $(since "$start") s; full log $file"
        return $rc
    fi
    log "$name: $(since "$start") s"
}

# --- content keys (cheap: no buildah, no network) -----------------------------------------

sha() { sha256sum | cut -d' ' -f1; }
# Relative path and content hash of every file given (directories recursively), sorted.
manifest() {
    local base=$1
    shift
    (cd "$base" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 |
        LC_ALL=C sort -z | xargs -0r sha256sum)
}
pytriton_pin() {
    grep -o 'nvidia-pytriton==[^"]*' "$REPO/pyproject.toml" | head -n1 | cut -d= -f3
}
PYTRITON=$(pytriton_pin)
[[ -n $PYTRITON ]] || { echo "build.sh: no nvidia-pytriton==X pin in pyproject.toml" >&2; exit 1; }

declare -A KEY REF DIR
KEY[rootfs]=$( { echo "recipe $RECIPE suite $SUITE mirror $MIRROR"; manifest "$HERE" debian-python/rootfs.sh debian-python/packages.txt; } | sha)
KEY[debian-python]=$( { echo "rootfs ${KEY[rootfs]}"; manifest "$HERE" debian-python/Containerfile; } | sha)
KEY[pause]=$( { echo "recipe $RECIPE version $PAUSE_VERSION"; gcc --version | head -n1; manifest "$HERE" pause; } | sha)
KEY[tritonserver-cpu]=$( {
    echo "recipe $RECIPE base ${KEY[debian-python]} nvidia-pytriton $PYTRITON python $PYTHON_ABI"
    manifest "$HERE" tritonserver-cpu
} | sha)
# What the operator's build context holds (see .dockerignore: pyproject.toml and operator/).
KEY[turnpike]=$( {
    echo "recipe $RECIPE base ${KEY[debian-python]}"
    manifest "$REPO" Dockerfile .dockerignore pyproject.toml operator
} | sha)
OPERATOR_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -n1)
REF[pause]=$REGISTRY/pause:$PAUSE_VERSION-${KEY[pause]:0:12}
REF[debian-python]=$REGISTRY/debian-python:$SUITE-${KEY[debian-python]:0:12}
REF[tritonserver-cpu]=$REGISTRY/tritonserver-cpu:$TRITON_VERSION-${KEY[tritonserver-cpu]:0:12}
REF[turnpike]=$REGISTRY/turnpike:$OPERATOR_VERSION-${KEY[turnpike]:0:12}
for image in pause debian-python tritonserver-cpu turnpike; do
    DIR[$image]=$CACHE/$image-${KEY[$image]}
done
ROOTFS=$CACHE/rootfs/$SUITE-${KEY[rootfs]}.tar

# Which images are needed: the requested ones and what they are built FROM.
declare -A NEED
for image in "${WANT[@]}"; do
    NEED[$image]=1
    [[ $image == tritonserver-cpu || $image == turnpike ]] && NEED[debian-python]=1
done
ORDER=()
for image in pause debian-python tritonserver-cpu turnpike; do
    [[ -n ${NEED[$image]:-} ]] && ORDER+=("$image")
done

write_index() {
    local index out entries=()
    for image in "${WANT[@]}"; do
        entries+=("$(jq -cn --arg image "$image" --arg name "${REF[$image]}" \
            --arg archive "${DIR[$image]}/image.tar" --arg key "${KEY[$image]}" \
            '{image: $image, name: $name, archive: $archive, key: $key}')")
    done
    out=$(printf '%s\n' "${entries[@]}" | jq -s .)
    index=$CACHE/index-$(printf '%s' "$out" | sha).json
    if [[ ! -f $index ]]; then
        printf '%s\n' "$out" >"$index.$$"
        mv -f "$index.$$" "$index"
    fi
    echo "$index"
}

all_cached() {
    for image in "${WANT[@]}"; do [[ -f ${DIR[$image]}/image.tar ]] || return 1; done
}

if ((PLAN)); then
    for image in "${WANT[@]}"; do
        jq -cn --arg image "$image" --arg name "${REF[$image]}" --arg key "${KEY[$image]}" \
            --arg archive "${DIR[$image]}/image.tar" --argjson cached "$([[ -f ${DIR[$image]}/image.tar ]] && echo true || echo false)" \
            '{image: $image, name: $name, archive: $archive, key: $key, cached: $cached}'
    done | jq -s .
    exit 0
fi

mkdir -p "$CACHE"
if all_cached; then
    for image in "${WANT[@]}"; do touch "${DIR[$image]}" "${DIR[$image]}/image.tar" 2>/dev/null || true; done
    log "all cached: ${WANT[*]}"
    write_index
    exit 0
fi

# --- building (under the lock) -----------------------------------------------------------

[[ $(id -u) == 0 ]] || { echo "build.sh: building images needs root (debootstrap, buildah)" >&2; exit 1; }
for tool in buildah debootstrap gcc jq; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (hack/install-system-deps.sh?)" >&2; exit 1; }
done
if ((VERIFY)); then
    for tool in runc tar ip ssh-keygen; do
        command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (or pass --no-verify)" >&2; exit 1; }
    done
fi

exec 9>"$CACHE/.lock"
if ! flock -n 9; then
    log "another build holds $CACHE/.lock; waiting"
    flock 9
fi

STORE=$CACHE/storage
BUILDAH=(buildah --root "$STORE/root" --runroot "$STORE/runroot" --storage-driver overlay)
# RUN steps: chroot isolation (no cgroups or namespaces needed beyond a mount namespace),
# the host's network (apt and pip reach their registries), never pull: FROM images are local.
BUILD=(nice -n 10 "${BUILDAH[@]}" build --isolation chroot --network host --pull=never
    --format docker --omit-history --identity-label=false --layers=false)
# Under the lock nobody else is building: whatever an interrupted run left is stale
# (its work directory, a smoke-test container, a buildah working container).
for stale in "$CACHE"/.work.*; do
    [[ -d $stale ]] || continue
    for state in "$stale"/smoke-*/runc; do
        [[ -d $state ]] || continue
        for cid in $(runc --root "$state" list -q 2>/dev/null); do
            runc --root "$state" delete --force "$cid" >/dev/null 2>&1 || true
        done
    done
    rm -rf "$stale"
done
"${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
WORK=$(mktemp -d "$CACHE/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

in_store() { "${BUILDAH[@]}" inspect --type image "$1" >/dev/null 2>&1; }
# The base image must be in buildah's storage to build FROM it; reload it from its archive.
ensure_loaded() {
    local image=$1
    in_store "${REF[$image]}" && return 0
    step "load ${REF[$image]}" "${BUILDAH[@]}" pull --quiet "docker-archive:${DIR[$image]}/image.tar" >/dev/null
    in_store "${REF[$image]}" || "${BUILDAH[@]}" tag "$("${BUILDAH[@]}" pull --quiet "docker-archive:${DIR[$image]}/image.tar")" "${REF[$image]}"
}

# publish IMAGE STAGING: export to a docker-archive, check it, rename into the cache.
publish() {
    local image=$1 staging=$2 size
    step "$image: export" "${BUILDAH[@]}" push --remove-signatures "${REF[$image]}" \
        "docker-archive:$staging/image.tar:${REF[$image]}"
    tar -xOf "$staging/image.tar" manifest.json | jq -e --arg ref "${REF[$image]}" \
        '.[0].RepoTags == [$ref]' >/dev/null || { log "$image: archive lacks RepoTags ${REF[$image]}"; return 1; }
    if ((VERIFY)); then
        step "$image: verify" python3 "$HERE/smoke.py" "$image" "$staging/image.tar" \
            --ref "${REF[$image]}" --repo "$REPO" --work "$WORK/smoke-$image" --report "$staging/verify.json"
    fi
    size=$(stat -c %s "$staging/image.tar")
    jq -n --arg image "$image" --arg name "${REF[$image]}" --arg key "${KEY[$image]}" \
        --argjson size "$size" --arg built "$(date -u +%FT%TZ)" \
        '{image: $image, name: $name, key: $key, archive_bytes: $size, built: $built}' >"$staging/image.json"
    rm -rf "${DIR[$image]}"
    mv -T "$staging" "${DIR[$image]}"
    log "$image: ${REF[$image]} ($(du -h "${DIR[$image]}/image.tar" | cut -f1) archive) -> ${DIR[$image]}"
}

build_rootfs() {
    [[ -f $ROOTFS ]] && return 0
    mkdir -p "$CACHE/rootfs"
    step "rootfs: debootstrap $SUITE" nice -n 10 "$HERE/debian-python/rootfs.sh" \
        "$SUITE" "$MIRROR" "$HERE/debian-python/packages.txt" "$ROOTFS" "$CACHE/debs"
}

build_pause() {
    local ctx=$WORK/pause
    mkdir -p "$ctx"
    cp "$HERE/pause/Containerfile" "$ctx/"
    step "pause: gcc -static" gcc -static -Os -s -Wall -Wextra -Werror -DVERSION="\"$PAUSE_VERSION\"" \
        -o "$ctx/pause" "$HERE/pause/pause.c"
    step "pause: build" "${BUILD[@]}" -t "${REF[pause]}" -f "$ctx/Containerfile" "$ctx"
}

build_debian_python() {
    local ctx=$WORK/debian-python
    build_rootfs
    mkdir -p "$ctx"
    cp "$HERE/debian-python/Containerfile" "$ctx/"
    ln "$ROOTFS" "$ctx/rootfs.tar" 2>/dev/null || cp "$ROOTFS" "$ctx/rootfs.tar"
    step "debian-python: build" "${BUILD[@]}" -t "${REF[debian-python]}" \
        --label "dev.turnpike.key=${KEY[debian-python]}" -f "$ctx/Containerfile" "$ctx"
}

# Lay out the wheel's server, Python backend and libraries as the image's /opt/tritonserver.
triton_context() {
    local ctx=$1 site="" wheel
    if [[ -x $VENV/bin/python ]]; then
        site=$("$VENV/bin/python" - "$PYTRITON" <<'EOF' 2>/dev/null || true
import sys
from importlib import metadata
try:
    dist = metadata.distribution("nvidia-pytriton")
except metadata.PackageNotFoundError:
    sys.exit(0)
if dist.version == sys.argv[1]:
    print(dist.locate_file(""))
EOF
        )
    fi
    if [[ -z $site ]]; then
        # Not installed (or another version): the wheel itself, cached.
        mkdir -p "$CACHE/wheels"
        wheel=$(ls "$CACHE/wheels"/nvidia_pytriton-"$PYTRITON"-*.whl 2>/dev/null | head -n1 || true)
        if [[ -z $wheel ]]; then
            step "tritonserver-cpu: pip download nvidia-pytriton==$PYTRITON" \
                python3 -m pip download --quiet --no-deps --only-binary=:all: \
                -d "$CACHE/wheels" "nvidia-pytriton==$PYTRITON"
            wheel=$(ls "$CACHE/wheels"/nvidia_pytriton-"$PYTRITON"-*.whl | head -n1)
        fi
        site=$WORK/wheel
        step "tritonserver-cpu: unzip wheel" python3 - "$wheel" "$site" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        if info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
            path = z.extract(info, sys.argv[2])
            mode = info.external_attr >> 16
            if mode:
                import os
                os.chmod(path, mode & 0o777)
EOF
    fi
    log "tritonserver-cpu: nvidia-pytriton $PYTRITON from $site"
    local src=$site/pytriton/tritonserver opt=$ctx/opt/tritonserver
    mkdir -p "$opt/bin" "$opt/backends/python" "$opt/caches" "$opt/lib"
    cp "$src/bin/tritonserver" "$opt/bin/"
    cp "$src/backends/python/libtriton_python.so" "$src/backends/python/triton_python_backend_utils.py" \
        "$opt/backends/python/"
    cp "$src/python_backend_stubs/$PYTHON_ABI/triton_python_backend_stub" "$opt/backends/python/"
    cp -r "$src/caches/." "$opt/caches/"
    # Every bundled library except pytriton's own libpython (3.13, 32 MB, needed by nothing here).
    find "$site/nvidia_pytriton.libs" -maxdepth 1 -type f ! -name 'libpython*' -exec cp {} "$opt/lib/" \;
    chmod 0755 "$opt/bin/tritonserver" "$opt/backends/python/triton_python_backend_stub"
    for f in "$site"/nvidia_pytriton-"$PYTRITON".dist-info/{LICENSE*,licenses}; do
        [[ -e $f ]] && cp -r "$f" "$opt/"
    done
    return 0
}

build_tritonserver_cpu() {
    local ctx=$WORK/tritonserver-cpu
    mkdir -p "$ctx"
    cp "$HERE/tritonserver-cpu/"* "$ctx/"
    local start
    start=$(now_us)
    triton_context "$ctx"
    log "tritonserver-cpu: lay out the wheel: $(since "$start") s"
    ensure_loaded debian-python
    step "tritonserver-cpu: build" "${BUILD[@]}" -t "${REF[tritonserver-cpu]}" \
        --build-arg "BASE_IMAGE=${REF[debian-python]}" --build-arg "TRITON_VERSION=$TRITON_VERSION" \
        --build-arg "PYTRITON_VERSION=$PYTRITON" \
        --label "dev.turnpike.key=${KEY[tritonserver-cpu]}" -f "$ctx/Containerfile" "$ctx"
}

# pip inside RUN steps trusts what pip here trusts (a TLS-inspecting proxy's CA, say) and uses
# the same index: the host's CA bundle and a pip.conf are mounted for the build only, never
# committed (the operator image's last stage has no RUN step).
pip_mounts() {
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}} conf=$WORK/pip.conf
    {
        echo "[global]"
        [[ -f $ca ]] && echo "cert = /etc/ssl/certs/ca-certificates.crt"
        [[ -n ${PIP_INDEX_URL:-} ]] && echo "index-url = $PIP_INDEX_URL"
        [[ -n ${PIP_EXTRA_INDEX_URL:-} ]] && echo "extra-index-url = $PIP_EXTRA_INDEX_URL"
        [[ -n ${PIP_TRUSTED_HOST:-} ]] && echo "trusted-host = $PIP_TRUSTED_HOST"
        [[ -n ${PIP_DEFAULT_TIMEOUT:-} ]] && echo "timeout = $PIP_DEFAULT_TIMEOUT"
    } >"$conf"
    [[ -f $ca ]] && printf '%s\n' -v "$ca:/etc/ssl/certs/ca-certificates.crt:ro"
    printf '%s\n' -v "$conf:/etc/pip.conf:ro"
}

build_turnpike() {
    local mounts
    ensure_loaded debian-python
    mapfile -t mounts < <(pip_mounts)
    # The repository's own Dockerfile, the repository as context (.dockerignore applies).
    step "turnpike: build (pip install from PyPI)" "${BUILD[@]}" -t "${REF[turnpike]}" \
        --build-arg "PYTHON_IMAGE=${REF[debian-python]}" "${mounts[@]}" \
        --label "dev.turnpike.key=${KEY[turnpike]}" -f "$REPO/Dockerfile" "$REPO"
}

# Old versions: keep the newest $KEEP per image (this run's included), drop the rest from the
# cache and from buildah's storage (which holds only what is being built FROM).
prune() {
    local image
    for image in pause debian-python tritonserver-cpu turnpike; do
        find "$CACHE" -maxdepth 1 -type d -regextype egrep -regex ".*/$image-[0-9a-f]{64}" -printf '%T@ %p\n' |
            sort -rn | cut -d' ' -f2- | { grep -vxF "${DIR[$image]}" || true; } | tail -n +"$KEEP" | xargs -r rm -rf
    done
    ls -1t "$CACHE/rootfs/"*.tar 2>/dev/null | { grep -vxF "$ROOTFS" || true; } | tail -n +"$KEEP" | xargs -r rm -f
    local keep_refs=" ${REF[debian-python]} " name
    for name in $("${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^$REGISTRY/" || true); do
        [[ $keep_refs == *" $name "* ]] || "${BUILDAH[@]}" rmi --force "$name" >/dev/null 2>&1 || true
    done
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
    find "$CACHE" -maxdepth 1 -name 'index-*.json' -mtime +30 -delete 2>/dev/null || true
}

built=()
for image in "${ORDER[@]}"; do
    if [[ -f ${DIR[$image]}/image.tar ]]; then
        log "$image: cached ${REF[$image]}"
        touch "${DIR[$image]}" "${DIR[$image]}/image.tar"
        continue
    fi
    start=$(now_us)
    log "$image: building ${REF[$image]} (key ${KEY[$image]:0:12})"
    "build_${image//-/_}"
    staging=$WORK/out-$image
    mkdir -m 0755 "$staging"
    publish "$image" "$staging"
    log "$image: done in $(since "$start") s"
    built+=("$image")
done
prune
log "built: ${built[*]:-nothing}"
write_index
