#!/usr/bin/env bash
# Debian packages the tests, the demo and the real node need. Idempotent;
# prints nothing when all are present.
#
# - prometheus: the real Prometheus of the Prometheus metrics source, run as a
#   plain process on 127.0.0.1 (its package would start a system service
#   listening on every interface, so service starts are refused while it installs);
# - nginx-light: the peer `make bench-gateway` measures the gateway against, run
#   as a plain process with its own configuration on 127.0.0.1;
# - runc, nftables, iproute2: the real node (the OCI runtime containerd calls,
#   the guard table and kube-proxy's nftables mode, the bridge);
# - buildah, debootstrap, gcc, jq: the node's images, built here (hack/images);
#   ssh-keygen (openssh-client): their checks' ssh keys;
# - openssl: the local cluster's certificates.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/usr/bin/$1" || -x "/sbin/$1" ]]; }
have prometheus || need+=(prometheus)
have nginx || need+=(nginx-light)
for tool in openssl runc nft buildah debootstrap gcc jq; do
  pkg=$tool
  [[ $tool == nft ]] && pkg=nftables
  have "$tool" || need+=("$pkg")
done
have ip || need+=(iproute2)
have ssh-keygen || need+=(openssh-client)
[[ ${#need[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install these Debian packages first: ${need[*]}" >&2
  exit 1
fi
echo "installing ${need[*]} (apt-get)" >&2
added_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi
trap '[[ $added_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Never leave a system Prometheus (0.0.0.0:9090) or nginx (0.0.0.0:80) listening,
# now or after a reboot: the tests and benchmarks run their own on loopback.
if command -v systemctl >/dev/null 2>&1; then
    for unit in prometheus nginx; do systemctl disable --now "$unit" 2>/dev/null || true; done
fi
pkill -x prometheus 2>/dev/null || true
