#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules, once per machine: the
# control plane, kwok, the real node's kubelet, kube-proxy, GPU device plugin,
# containerd, CNI plugins and crictl, helm and kubeconform.
#
# Output: a directory under ${TURNPIKE_CACHE:-~/.cache/turnpike} keyed by a hash
# of the pinned versions, the Go module files and the Go toolchain, so every
# clone on this machine shares one build. Prints the directory on stdout; progress
# goes to stderr. A second call with the same inputs returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${TURNPIKE_CACHE:-$HOME/.cache/turnpike}"
key="$( { cat "$here/versions.env" "$here/cluster/go.mod" "$here/cluster/go.sum" "$here"/cluster/*.go "$here/build-cluster.sh"; go version; } | sha256sum | cut -c1-16)"
out="$cache_root/cluster-${KUBE_VERSION}-${key}"

if [[ -x "$out/bin/k8s-multi" && -f "$out/.complete" ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.build.lock"
echo "turnpike: waiting for the build lock ($cache_root/.build.lock)" >&2
flock 9
if [[ -f "$out/.complete" ]]; then echo "$out"; exit 0; fi

log() { printf '[build-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
start=$(date +%s)
tmp="$(mktemp -d "$cache_root/.build-XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"

# go build -v names each package as it compiles: turn that into a counter.
progress() {
  local total=$1 n=0 line
  while IFS= read -r line; do
    case "$line" in
      *" "*|"#"*) printf '%s\n' "$line" >&2 ;;  # errors and warnings pass through
      *) n=$((n + 1))
         if (( n % 100 == 0 )); then log "compiled $n / ~$total packages ($(( $(date +%s) - start ))s)"; fi ;;
    esac
  done
}

cd "$here/cluster"
log "downloading modules (Kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
log "(a cold build on 2 cores takes about 10 minutes; later calls reuse it)"
go mod download
total=$(go list -deps . | wc -l)
kv="k8s.io/component-base/version"
cv="k8s.io/client-go/pkg/version"
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in "$kv" "$cv"; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
ldflags+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
log "compiling the control plane: ~$total packages, tens of minutes on 2 cores the first time"
set -o pipefail
go build -v -trimpath -ldflags "$ldflags" -o "$tmp/bin/k8s-multi" . 2>&1 | progress "$total"
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok \
            kubelet kube-proxy gpu-device-plugin; do
  ln -s k8s-multi "$tmp/bin/$name"
done

# kwok's Stage files (how fake nodes and pods move through their lifecycle).
kwok_dir="$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
mkdir -p "$tmp/kwok-stages"
cp -r "$kwok_dir/kustomize/stage/." "$tmp/kwok-stages/"
chmod -R u+w "$tmp/kwok-stages"

# helm and kubeconform have their own dependency graphs (helm follows a newer
# Kubernetes minor), so they build from their own go.mod files.
log "compiling helm $HELM_VERSION"
GOBIN="$tmp/bin" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
log "compiling kubeconform $KUBECONFORM_VERSION"
GOBIN="$tmp/bin" go install -trimpath -ldflags "-s -w" \
  "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"

# The real node's runtime: containerd 2 (the kubelet of Kubernetes >= 1.36
# needs it) with its runc shim, the CNI plugins, and crictl. containerd wants
# cgo; each builds from its own go.mod, as its release does.
log "compiling containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
cdv="github.com/containerd/containerd/v2/version"
GOBIN="$tmp/bin" CGO_ENABLED=1 go install -trimpath \
  -ldflags "-s -w -X $cdv.Version=${CONTAINERD_VERSION#v} -X $cdv.Revision=turnpike-local" \
  "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
log "compiling CNI plugins $CNI_PLUGINS_VERSION (bridge, host-local, loopback, portmap, tuning)"
mkdir -p "$tmp/cni"
cni="github.com/containernetworking/plugins"
GOBIN="$tmp/cni" CGO_ENABLED=0 go install -trimpath \
  -ldflags "-s -w -X $cni/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION" \
  "$cni/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
  "$cni/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
  "$cni/plugins/main/loopback@$CNI_PLUGINS_VERSION" \
  "$cni/plugins/meta/portmap@$CNI_PLUGINS_VERSION" \
  "$cni/plugins/meta/tuning@$CNI_PLUGINS_VERSION"
log "compiling crictl $CRI_TOOLS_VERSION"
GOBIN="$tmp/bin" CGO_ENABLED=0 go install -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRI_TOOLS_VERSION" \
  "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"

elapsed=$(( $(date +%s) - start ))
echo "$elapsed" > "$tmp/build-seconds"
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
log "done in ${elapsed}s: $out"
echo "$out"
