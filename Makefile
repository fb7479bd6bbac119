# Turnpike developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
# Loopback and the real node's harness range (hack/netrule.py) never go through a proxy.
export NO_PROXY := 127.0.0.1,localhost,198.18.0.0/15,198.18.0.1
export no_proxy := 127.0.0.1,localhost,198.18.0.0/15,198.18.0.1

.PHONY: help
help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: setup
setup: $(VENV)/.installed ## create the virtualenv with the operator and dev tools

.PHONY: cluster-build
cluster-build: system-deps ## compile the local cluster (control plane, kubelet, containerd, CNI, CoreDNS) and build its images (cached per machine)
	hack/build-cluster.sh
	python3 hack/coredns.py build
	hack/images/build.sh

.PHONY: cluster-up
cluster-up: setup system-deps ## start (or reuse) the local cluster: control plane, kwok GPU pools, a real node
	$(PY) hack/localcluster.py up

.PHONY: cluster-down
cluster-down: setup ## stop the local cluster and remove its state
	$(PY) hack/localcluster.py down

.PHONY: kubeconfig
kubeconfig: setup ## print the local cluster's kubeconfig path
	@$(PY) hack/localcluster.py kubeconfig

.PHONY: crds
crds: setup ## regenerate crds/ from the pydantic models
	$(PY) -m turnpike.api.crdgen crds/
	$(PY) -m turnpike.api.docgen docs/api-reference.md
	$(PY) -m turnpike.manifests deploy/admission/capacity-tiers.yaml charts/turnpike/templates/capacity-admission.yaml
	hack/sync-chart-crds.sh

.PHONY: lint
lint: setup ## ruff and mypy --strict
	$(VENV)/bin/ruff check operator tests hack bench
	$(VENV)/bin/mypy

.PHONY: test
test: setup system-deps lint ## everything CI runs: lint, unit, integration and e2e tests on the local cluster
	hack/build-cluster.sh >/dev/null
	hack/images/build.sh >/dev/null
	$(VENV)/bin/pytest -ra --durations=15 tests

.PHONY: bench-reconcile
bench-reconcile: setup ## ModelDeployments at 100/1,000, then 100/1,000/5,000 with a CapacityTier + autoscaling; latency, RSS, CPU, tier cost
	hack/build-cluster.sh >/dev/null
	$(PY) bench/reconcile.py --sizes 100,1000
	$(PY) bench/reconcile.py --sizes 100,1000,5000 --tiers

.PHONY: demo
demo: setup system-deps ## the whole loop: local cluster, operator, real Triton pods, live autoscaling (≤ 5 min)
	hack/build-cluster.sh >/dev/null
	hack/images/build.sh >/dev/null
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: system-deps
system-deps: ## Debian packages the tests need (runc, nftables, buildah, debootstrap, prometheus, ...), installed once
	hack/install-system-deps.sh

.PHONY: bench-autoscale
bench-autoscale: setup system-deps ## autoscaler: reaction on real Triton pods (~4 min), then the HPA/KPA/KEDA simulation, fair baselines, frontier and held-out traces (~9 min)
	hack/build-cluster.sh >/dev/null
	hack/images/build.sh >/dev/null
	$(PY) bench/autoscale_reaction.py
	$(PY) -m bench.autoscale_sim.run --out docs/autoscale-sim.png --markdown docs/autoscale-sim.md

.PHONY: bench-gateway
bench-gateway: setup system-deps ## the gateway next to nginx on real Tritons: added latency, requests per proxy CPU-second, routing under Poisson load (~7 min; BENCH_ARGS=--quick)
	$(PY) bench/gateway.py $(BENCH_ARGS)

.PHONY: slo-dashboard
slo-dashboard: setup system-deps ## render the dashboard's SLO and GPU-meter panels from a real run on real Triton pods (~5 min) into docs/slo-dashboard.png
	hack/build-cluster.sh >/dev/null
	hack/images/build.sh >/dev/null
	$(PY) hack/slo_dashboard.py

.PHONY: fuzz
fuzz: setup ## the property-based tests (parse/render/plan/status, metrics, decide, tier accounting) with 140,000 examples
	TURNPIKE_HYPOTHESIS_PROFILE=turnpike-fuzz $(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_properties.py tests/unit/test_reconcile_plan.py tests/unit/test_capacity_accounts.py --hypothesis-show-statistics
