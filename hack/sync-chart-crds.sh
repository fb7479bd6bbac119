#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml) into the Helm chart (charts/turnpike/crds/),
# removing chart CRDs that no longer exist upstream.
#
#   hack/sync-chart-crds.sh          copy
#   hack/sync-chart-crds.sh --check  exit 1 (and list the differences) if the chart is stale
#
# Run it after `make crds`; tests/integration/test_chart.py fails while the two differ.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds"
dst="$root/charts/turnpike/crds"
check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$src"/*.yaml)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "no CRDs in $src" >&2
  exit 1
fi

stale=0
for file in "${sources[@]}"; do
  name="$(basename "$file")"
  if ! cmp -s "$file" "$dst/$name"; then
    stale=1
    if $check; then
      echo "differs: charts/turnpike/crds/$name (from crds/$name)" >&2
    else
      mkdir -p "$dst"
      cp "$file" "$dst/$name"
      echo "copied crds/$name"
    fi
  fi
done
for file in "$dst"/*.yaml; do
  name="$(basename "$file")"
  if [[ ! -e "$src/$name" ]]; then
    stale=1
    if $check; then
      echo "extra: charts/turnpike/crds/$name (not in crds/)" >&2
    else
      rm -- "$file"
      echo "removed charts/turnpike/crds/$name"
    fi
  fi
done

if $check && [[ $stale -ne 0 ]]; then
  echo "the chart's CRDs are stale: run hack/sync-chart-crds.sh" >&2
  exit 1
fi
exit 0
