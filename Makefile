# vkubelet developer entry points. `make test` runs everything (CI runs it through .ci/run).
#
#   make test [ARGS=...]   format, lint, control plane, unit and integration tests (scripts/test.sh);
#                          ARGS go to the integration-test run, e.g. `make test ARGS=harness`
#   make lint              cargo fmt --check and clippy
#   make unit              unit tests only (no cluster needed)
#   make cluster-up        start the dev control plane (.cluster/dev) and a backend one
#                          (.cluster/backend, for the kube provider); prints the export line:
#                          eval "$(make -s cluster-up)"
#   make integration       integration tests against the dev control plane
#   make cluster-down      stop it
#   make build             release build of the vkubelet binary
#   make run               dev control plane + `vkubelet run` (node vk-local, process provider, the
#                          burst-policy webhook on 127.0.0.1:9443) in the foreground; Ctrl-C stops
#                          vkubelet, `make cluster-down` the control plane
#   make bench [N="1000 10000"] [BENCH_KUBE=1]
#                          burst benchmark, vkubelet (sim provider; with BENCH_KUBE=1 the kube
#                          provider bursting into a second cluster) beside the null kubelet, same
#                          Rust load generator (crates/vk-bench); JSON + PNG in target/bench/latest.
#                          Not part of test

SHELL := /bin/bash
CLUSTER_DIR ?= .cluster/dev
# The second control plane the kube provider's tests burst into.
BACKEND_DIR ?= .cluster/backend
ARGS ?=

.PHONY: test lint unit integration cluster-up cluster-down build run bench
NODE ?= vk-local
PROVIDER ?= process
N ?= 1000 10000
WEBHOOK_PORT ?= 9443

test:
	scripts/test.sh $(if $(strip $(ARGS)),-- $(ARGS))

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	cargo nextest run --workspace --locked --lib --bins --no-tests=warn

integration:
	VKUBELET_TEST_KUBECONFIG=$(abspath $(CLUSTER_DIR))/admin.kubeconfig \
	  VKUBELET_TEST_BACKEND_KUBECONFIG=$(abspath $(BACKEND_DIR))/admin.kubeconfig VKUBELET_TEST_REQUIRE_CLUSTER=1 \
	  cargo nextest run --workspace --locked --tests -E 'kind(test)' $(ARGS)

cluster-up:
	@kubeconfig=$$(scripts/cluster.sh up $(CLUSTER_DIR)) && \
	  backend=$$(scripts/cluster.sh up $(BACKEND_DIR)) && \
	  echo "export KUBECONFIG=$$kubeconfig VKUBELET_TEST_KUBECONFIG=$$kubeconfig VKUBELET_TEST_BACKEND_KUBECONFIG=$$backend"

cluster-down:
	scripts/cluster.sh down $(CLUSTER_DIR)
	scripts/cluster.sh down $(BACKEND_DIR)

build:
	cargo build --release --locked -p vkubelet

run: build
	@kubeconfig=$$(scripts/cluster.sh up $(CLUSTER_DIR)) && \
	  echo "control plane up; in another shell: export KUBECONFIG=$$kubeconfig" && \
	  dir=$(abspath $(CLUSTER_DIR)) && \
	  printf '{"stateDir": "%s/process", "secretsDir": "%s/process-secrets"}\n' "$$dir" "$$dir" > "$$dir/process.json" && \
	  exec target/release/vkubelet run --kubeconfig "$$kubeconfig" --node-name $(NODE) --provider $(PROVIDER) \
	    $(if $(filter process,$(PROVIDER)),--provider-config "$$dir/process.json") \
	    --webhook-addr 127.0.0.1:$(WEBHOOK_PORT) --webhook-cert-dir "$$dir/webhook"

bench:
	python3 bench/burst.py $(foreach n,$(N),--n $(n)) $(if $(filter 1,$(BENCH_KUBE)),--kube)
