# Turnpike developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
export NO_PROXY := 127.0.0.1,localhost
export no_proxy := 127.0.0.1,localhost

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
cluster-build: ## compile the local control plane from Go modules (cached per machine)
	hack/build-cluster.sh

.PHONY: cluster-up
cluster-up: setup ## start (or reuse) the local cluster with fake GPU nodes
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
	$(VENV)/bin/pytest -ra --durations=15 tests

.PHONY: bench-reconcile
bench-reconcile: setup ## create 100 and 1,000 ModelDeployments; print latency, RSS, CPU
	hack/build-cluster.sh >/dev/null
	$(PY) bench/reconcile.py

.PHONY: demo
demo: setup system-deps ## the whole loop: local cluster, operator, real Tritons, live autoscaling (≤ 5 min)
	hack/build-cluster.sh >/dev/null
	$(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: system-deps
system-deps: ## Debian packages the tests need (prometheus, openssl), installed once
	hack/install-system-deps.sh

.PHONY: bench-autoscale
bench-autoscale: setup system-deps ## autoscaler: reaction on real Triton (~4 min), then the HPA/KPA/KEDA simulation (~30 s)
	hack/build-cluster.sh >/dev/null
	$(PY) bench/autoscale_reaction.py
	$(PY) -m bench.autoscale_sim.run --out docs/autoscale-sim.png --markdown docs/autoscale-sim.md
