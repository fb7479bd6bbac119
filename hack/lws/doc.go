// Package lws pins the LeaderWorkerSet controller (sigs.k8s.io/lws) that the
// local cluster runs for multi-node replicas. There is nothing to build here:
// hack/lws.py runs `go build sigs.k8s.io/lws/cmd` inside this module, so the
// controller is built from exactly the versions in go.mod and go.sum.
package lws
