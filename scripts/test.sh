#!/usr/bin/env bash
# Run all of vkubelet's checks and tests: the one command behind `make test` and CI (.ci/run).
#
#   scripts/test.sh                 format, lint, control plane, unit tests, integration tests
#   scripts/test.sh -- ARGS...      the same, passing ARGS to the integration-test nextest run,
#                                   e.g. `scripts/test.sh -- harness` (a test-name filter)
#
# Works on a fresh Debian machine with the Rust toolchain, python3, make and git: it installs
# cargo-nextest if missing, and scripts/cluster.sh installs/builds the control plane (cached in
# ~/.cache/vkubelet). Every stage runs even if an earlier one failed (except that integration
# tests need the control plane); the exit status is non-zero if any stage failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ "${1:-}" = "--" ]; then shift; fi
EXTRA_ARGS=("$@")

CLUSTER_DIR=$ROOT/target/test-cluster
# A second control plane: the backend cluster the kube provider bursts into.
BACKEND_DIR=$ROOT/target/test-cluster-backend
PROFILE=default
if [ "${CI:-}" = true ]; then PROFILE=ci; fi

section() { printf '\n==== %s ====\n' "$*"; }
note() { printf '[test] %s\n' "$*" >&2; }

FAILED=()
# stage NAME CMD...: run CMD under a header and record (not abort on) its failure.
stage() {
  local name=$1 start=$SECONDS
  shift
  section "$name"
  if "$@"; then
    printf -- '---- %s: ok (%ss)\n' "$name" $((SECONDS - start))
  else
    printf -- '---- %s: FAILED (exit %s, %ss)\n' "$name" "$?" $((SECONDS - start))
    FAILED+=("$name")
    return 1
  fi
}


ensure_rust_tools() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || { note "cargo fmt/clippy missing and no rustup to add them"; return 1; }
    rustup component add rustfmt clippy || return 1
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    note "installing cargo-nextest"
    cargo install cargo-nextest --locked || return 1
  fi
  cargo --version && cargo nextest --version | head -n1
}

control_plane() {
  scripts/cluster.sh build   # also installs etcd, openssl, curl and kubectl when missing
}

unit_tests() {
  cargo nextest run --workspace --locked --profile "$PROFILE" --lib --bins --no-tests=warn \
    && cargo test --workspace --locked --doc
}

cluster_down() {
  scripts/cluster.sh down "$CLUSTER_DIR" >/dev/null 2>&1 || true
  scripts/cluster.sh down "$BACKEND_DIR" >/dev/null 2>&1 || true
}

integration_tests() {
  cluster_down                        # a cluster left running by an interrupted run
  rm -rf "$CLUSTER_DIR" "$BACKEND_DIR" || return 1   # start from an empty etcd
  trap cluster_down EXIT
  local kubeconfig backend
  kubeconfig=$(scripts/cluster.sh up "$CLUSTER_DIR") || return 1
  backend=$(scripts/cluster.sh up "$BACKEND_DIR") || return 1
  export VKUBELET_TEST_KUBECONFIG=$kubeconfig VKUBELET_TEST_BACKEND_KUBECONFIG=$backend
  # Streaming tests run with both kubectls: the installed one (WebSocket) and 1.20 (SPDY).
  VKUBELET_KUBECTL_LEGACY=$(scripts/cluster.sh legacy-kubectl) || return 1
  export VKUBELET_KUBECTL_LEGACY
  # The cluster is up, so tests must not skip for want of one: make them fail instead.
  export VKUBELET_TEST_REQUIRE_CLUSTER=1
  note "VKUBELET_TEST_KUBECONFIG=$kubeconfig VKUBELET_TEST_BACKEND_KUBECONFIG=$backend"
  local failed=0
  cargo nextest run --workspace --locked --profile "$PROFILE" --tests -E 'kind(test)' \
    --no-tests=fail "${EXTRA_ARGS[@]}" || failed=1
  if [ ${#EXTRA_ARGS[@]} -eq 0 ]; then
    # RBAC proven, not assumed: the suites that start vkubelet again, each vkubelet running as
    # deploy/'s ServiceAccount (a TokenRequest token, deploy/'s ClusterRole only). Not in_cluster:
    # its teardown removes deploy/'s objects this run relies on.
    section "integration tests as deploy/'s ServiceAccount (VKUBELET_TEST_RBAC=deploy)"
    VKUBELET_TEST_RBAC=deploy cargo nextest run -p vkubelet --locked --profile "$PROFILE" \
      --test core --test resolution --test kubelet_api --test burst_policy --no-tests=fail \
      || failed=1
  fi
  if [ $failed = 1 ]; then
    note "control-plane logs: $CLUSTER_DIR/logs, $BACKEND_DIR/logs"
    return 1
  fi
}

trap 'exit 130' INT
trap 'exit 143' TERM

stage "toolchain" ensure_rust_tools || { section "FAILED: toolchain"; exit 1; }
stage "format (cargo fmt --check)" cargo fmt --all -- --check || true
stage "lint (cargo clippy)" cargo clippy --workspace --all-targets --locked -- -D warnings || true
control_plane_ok=1
stage "control plane (scripts/cluster.sh build)" control_plane || control_plane_ok=0
stage "unit tests" unit_tests || true
if [ $control_plane_ok = 1 ]; then
  stage "integration tests" integration_tests || true
else
  note "skipping integration tests: no control plane"
  FAILED+=("integration tests (not run)")
fi

if [ ${#FAILED[@]} -gt 0 ]; then
  section "FAILED"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
section "all checks and tests passed"
