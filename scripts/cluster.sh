#!/usr/bin/env bash
# vkubelet's local Kubernetes control plane: etcd + kube-apiserver + kube-scheduler +
# kube-controller-manager v1.20.2, built from Debian's `kubernetes` source package and run on
# loopback. Several clusters can run side by side, each in its own directory with its own ports.
#
#   scripts/cluster.sh build            build (or reuse) the cached control-plane binaries
#   scripts/cluster.sh up   DIR         start a cluster in DIR; prints the admin kubeconfig path
#   scripts/cluster.sh down DIR         stop the processes that `up DIR` started (and only those)
#   scripts/cluster.sh status DIR       exit 0 when the cluster in DIR answers /readyz
#   scripts/cluster.sh kill-apiserver DIR     kill -9 DIR's kube-apiserver (fault tests)
#   scripts/cluster.sh restart-apiserver DIR  start it again with the same flags; waits for /readyz
#   scripts/cluster.sh advance-etcd DIR       one etcd write outside /registry: resumed watches expire
#   scripts/cluster.sh legacy-kubectl   unpack (or reuse) Debian's kubectl 1.20 beside the
#                                       installed one; prints its path. It speaks SPDY to the
#                                       kubelet, where a modern kubectl speaks WebSocket.
#
# Environment: VKUBELET_CACHE (default ~/.cache/vkubelet) holds the build, keyed by version.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_ROOT=${VKUBELET_CACHE:-$HOME/.cache/vkubelet}
CACHE=$CACHE_ROOT/k8s-$K8S_VERSION
BIN=$CACHE/bin
COMPONENTS=(kube-apiserver kube-scheduler kube-controller-manager)

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() { # install the Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Runtime tools every cluster needs, whether or not the binaries were cached.
ensure_runtime_deps() {
  local pkgs=()
  command -v etcd >/dev/null || pkgs+=(etcd-server)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v kubectl >/dev/null || pkgs+=(kubernetes-client)  # kubectl 1.20, matches the control plane
  command -v bwrap >/dev/null || pkgs+=(bubblewrap)  # the process provider's sandbox
  command -v nsenter >/dev/null || pkgs+=(util-linux) # nsenter/setpriv: exec probes, hooks, runAsUser
  [ ${#pkgs[@]} -eq 0 ] || apt_install "${pkgs[@]}"
}

build() {
  ensure_runtime_deps
  local ok=1
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || ok=0; done
  if [ $ok = 1 ]; then log "using cached control plane $K8S_VERSION in $BIN"; return 0; fi

  log "building kube-apiserver/scheduler/controller-manager $K8S_VERSION from Debian source (~6 min on 2 cores)"
  if ! grep -rqs '^[^#]*deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/ \
     && ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/; then
    local suite; suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$suite" | as_root tee /etc/apt/sources.list.d/vkubelet-deb-src.sources >/dev/null
    apt_updated=
  fi
  apt_install golang-1.19-go rsync make golang-github-modern-go-reflect2-dev dpkg-dev
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }

  local src=$CACHE/src
  rm -rf "$src" && mkdir -p "$src"
  (cd "$src" && apt-get source --download-only "kubernetes=1.20.5+really$K8S_VERSION*" >/dev/null 2>&1 \
     || apt-get source --download-only kubernetes >/dev/null 2>&1) || die "apt-get source kubernetes failed"
  local orig; orig=$(ls "$src"/kubernetes_*really${K8S_VERSION}.orig.tar.gz 2>/dev/null | head -n1)
  [ -n "$orig" ] || die "Debian's kubernetes source is not version $K8S_VERSION: $(ls "$src")"
  mkdir "$src/k8s" && tar xzf "$orig" -C "$src/k8s" --strip-components=1
  cd "$src/k8s"
  # Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, whose unsafe map iteration makes a Go >= 1.18
  # build of kube-apiserver crash under load (SIGSEGV in mapiterinit). Debian's 1.0.2 fixes it.
  rm -rf vendor/github.com/modern-go/reflect2
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
  mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes
  if ! GOPATH=$PWD/.go PATH=/usr/lib/go-1.19/bin:$PATH CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor \
       make WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager" >"$CACHE/build.log" 2>&1; then
    tail -n 30 "$CACHE/build.log" >&2; die "control-plane build failed (full log: $CACHE/build.log)"
  fi
  mkdir -p "$BIN.tmp"
  for c in "${COMPONENTS[@]}"; do cp "_output/bin/$c" "$BIN.tmp/"; done
  rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  cd / && rm -rf "$src"   # ~1.5 GB of sources and objects; the binaries are all we keep
  log "built control plane into $BIN"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

certs() { # DIR
  local d=$1/pki; [ -f "$d/ca.crt" ] && return 0
  mkdir -p "$d" && cd "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
    -days 3650 -subj "/CN=vkubelet-test-ca" 2>/dev/null
  issue() { # name CN [O] [extensions]
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" -out "$1.csr" \
      -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
    printf '%s\n' "${4:-}" "extendedKeyUsage=${5:-clientAuth}" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3650 \
      -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  issue apiserver kube-apiserver "" \
    "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" serverAuth
  issue admin admin system:masters
  # The API server presents this when it calls a kubelet (logs, exec, port-forward, stats).
  issue kubelet-client kube-apiserver-kubelet-client system:masters
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
}

kubeconfig() { # file port user
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$2", certificate-authority: "$DIR/pki/ca.crt"}
users:
- name: $3
  user: {client-certificate: "$DIR/pki/$3.crt", client-key: "$DIR/pki/$3.key"}
contexts:
- name: local
  context: {cluster: local, user: $3}
current-context: local
KC
}

# Start a process in its own session, remember its pid and the exact binary so `down` never
# signals a recycled pid.
spawn() { # name cmd...
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
  exec_seen $! "$1"
}

# Until a child started with `&` has exec'd, /proc shows this script's command line under its pid,
# which `alive` would take for a process that exited: wait (at most 1 s) for its own.
exec_seen() { # pid binary
  local i
  for i in $(seq 100); do
    tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2" && return 0
    [ -e "/proc/$1" ] || return 0
    sleep 0.01
  done
}

alive() { # name -> pid if the recorded process still runs the binary we started
  local f=$DIR/$1.pid; [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$(cat "$DIR/$1.cmd" 2>/dev/null || echo x)" || return 1
  echo "$pid"
}

ready() {
  [ -f "$DIR/admin.kubeconfig" ] || return 1
  local port; port=$(cat "$DIR/apiserver.port" 2>/dev/null) || return 1
  curl -sf --max-time 2 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key" \
    "https://127.0.0.1:$port/readyz" >/dev/null 2>&1
}

up() {
  build
  mkdir -p "$DIR/logs"; DIR=$(cd "$DIR" && pwd)
  if ready && alive etcd >/dev/null && alive kube-apiserver >/dev/null \
     && alive kube-scheduler >/dev/null && alive kube-controller-manager >/dev/null; then
    log "cluster in $DIR is already up"; echo "$DIR/admin.kubeconfig"; return 0
  fi
  down >/dev/null 2>&1 || true
  certs "$DIR"
  local port eport pport
  port=$(free_port); eport=$(free_port); pport=$(free_port)
  echo "$port" > "$DIR/apiserver.port"
  kubeconfig "$DIR/admin.kubeconfig" "$port" admin
  cd "$DIR"
  echo etcd > etcd.cmd
  spawn etcd etcd --name default --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "default=http://127.0.0.1:$pport" --quota-backend-bytes 4294967296
  echo "$BIN/kube-apiserver" > kube-apiserver.cmd
  local apiserver=("$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$eport" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
    --tls-cert-file pki/apiserver.crt --tls-private-key-file pki/apiserver.key --client-ca-file pki/ca.crt \
    --service-account-key-file pki/sa.pub --service-account-signing-key-file pki/sa.key \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --authorization-mode Node,RBAC \
    --kubelet-client-certificate pki/kubelet-client.crt --kubelet-client-key pki/kubelet-client.key \
    `# default --kubelet-preferred-address-types (Hostname first), as in most clusters` \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged \
    --enable-admission-plugins NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultTolerationSeconds,NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ResourceQuota \
    --max-requests-inflight "${MAX_INFLIGHT:-400}" --max-mutating-requests-inflight "${MAX_MUT_INFLIGHT:-200}" \
    --profiling=false)
  # Kept so `restart-apiserver` starts it again with exactly these flags.
  printf '%s\0' "${apiserver[@]}" > kube-apiserver.args
  spawn kube-apiserver "${apiserver[@]}"
  local i
  for i in $(seq 120); do ready && break; alive kube-apiserver >/dev/null || { tail -n 20 logs/kube-apiserver.log >&2; die "kube-apiserver exited"; }; sleep 0.5; done
  ready || { tail -n 20 logs/kube-apiserver.log >&2; die "kube-apiserver not ready after 60 s"; }
  echo "$BIN/kube-scheduler" > kube-scheduler.cmd
  spawn kube-scheduler "$BIN/kube-scheduler" --kubeconfig admin.kubeconfig --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    --kube-api-qps "${SCHED_QPS:-200}" --kube-api-burst "${SCHED_QPS:-200}"
  echo "$BIN/kube-controller-manager" > kube-controller-manager.cmd
  spawn kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig admin.kubeconfig --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 \
    --service-account-private-key-file pki/sa.key --root-ca-file pki/ca.crt --use-service-account-credentials \
    --cluster-signing-cert-file pki/ca.crt --cluster-signing-key-file pki/ca.key --controllers '*' \
    --kube-api-qps "${CM_QPS:-200}" --kube-api-burst "${CM_QPS:-200}"
  # Pods can only be created once the controller-manager has made the default service account.
  for i in $(seq 120); do
    kubectl --kubeconfig admin.kubeconfig -n default get serviceaccount default >/dev/null 2>&1 && break
    alive kube-controller-manager >/dev/null || { tail -n 20 logs/kube-controller-manager.log >&2; die "kube-controller-manager exited"; }
    sleep 0.5
  done
  kubectl --kubeconfig admin.kubeconfig -n default get serviceaccount default >/dev/null 2>&1 \
    || die "controller-manager did not create the default service account within 60 s"
  log "cluster up in $DIR (apiserver https://127.0.0.1:$port)"
  echo "$DIR/admin.kubeconfig"
}

down() {
  [ -d "$DIR" ] || return 0
  local name pid pids=()
  for name in kube-controller-manager kube-scheduler kube-apiserver etcd; do
    if pid=$(alive "$name"); then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  local i
  for i in $(seq 50); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ $left = 0 ] && break; sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$DIR"/*.pid
  log "cluster in $DIR stopped"
}

# kill -9 the API server that `up DIR` started (a crash, for fault tests); waits until it is gone.
kill_apiserver() {
  local pid
  pid=$(alive kube-apiserver) || die "no kube-apiserver of $DIR is running"
  kill -KILL "$pid"
  local i
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  ! kill -0 "$pid" 2>/dev/null || die "kube-apiserver $pid survived SIGKILL"
  log "kube-apiserver of $DIR killed (pid $pid)"
}

# Start the API server of DIR again with the flags `up` gave it (same ports, same etcd), after a
# kill or crash; waits for /readyz.
restart_apiserver() {
  DIR=$(cd "$DIR" && pwd)
  [ -f "$DIR/kube-apiserver.args" ] || die "$DIR has no kube-apiserver.args: start it with \`up\` first"
  ! alive kube-apiserver >/dev/null || die "kube-apiserver of $DIR is still running"
  alive etcd >/dev/null || die "etcd of $DIR is not running"
  local args=()
  mapfile -d '' args < "$DIR/kube-apiserver.args"
  cd "$DIR"
  echo "---- restarted $(date -u +%FT%TZ)" >> logs/kube-apiserver.log
  setsid "${args[@]}" >>logs/kube-apiserver.log 2>&1 < /dev/null &
  echo $! > kube-apiserver.pid
  exec_seen $! "${args[0]}"
  local i
  # RESTART_WAIT: seconds to wait for /readyz; an API server over 100,000 pods reads them all
  # into its watch cache first.
  local wait=${RESTART_WAIT:-60}
  for i in $(seq $((wait * 2))); do ready && break; alive kube-apiserver >/dev/null || { tail -n 20 logs/kube-apiserver.log >&2; die "kube-apiserver exited"; }; sleep 0.5; done
  ready || { tail -n 20 logs/kube-apiserver.log >&2; die "kube-apiserver not ready after $wait s"; }
  log "kube-apiserver of $DIR restarted"
}

# Move etcd's revision past every resourceVersion a client of DIR holds, by one write to a key
# outside the API server's /registry prefix (through etcd's v3 JSON gateway: no etcdctl needed).
# Done while the API server is down, its restart builds its watch cache from a revision newer
# than any watch being resumed, so every such watch expires (410) and its client lists again:
# the fault tests' and the benchmark's way to make a watch expire on purpose.
advance_etcd() {
  DIR=$(cd "$DIR" && pwd)
  [ -f "$DIR/kube-apiserver.args" ] || die "$DIR has no kube-apiserver.args: start it with \`up\` first"
  alive etcd >/dev/null || die "etcd of $DIR is not running"
  local url
  url=$(tr '\0' '\n' < "$DIR/kube-apiserver.args" | sed -n '/^--etcd-servers$/{n;p;q}')
  [ -n "$url" ] || die "no --etcd-servers in $DIR/kube-apiserver.args"
  local key value
  key=$(printf 'vkubelet-harness/advance' | base64 -w0)
  value=$(date -u +%FT%T.%NZ | base64 -w0)
  curl -sf -X POST "$url/v3/kv/put" -d "{\"key\":\"$key\",\"value\":\"$value\"}" >/dev/null \
    || die "etcd put through $url/v3/kv/put failed"
  log "etcd of $DIR advanced one revision"
}

legacy_kubectl() {
  local dest=$CACHE_ROOT/kubectl-$K8S_VERSION
  local bin=$dest/usr/bin/kubectl
  if [ ! -x "$bin" ]; then
    log "unpacking Debian's kubernetes-client (kubectl $K8S_VERSION) into $dest"
    local tmp; tmp=$(mktemp -d)
    if ! (cd "$tmp" && apt-get download kubernetes-client >/dev/null 2>&1); then
      as_root apt-get update -qq
      (cd "$tmp" && apt-get download kubernetes-client >/dev/null) || die "apt-get download kubernetes-client failed"
    fi
    mkdir -p "$dest"
    dpkg -x "$tmp"/kubernetes-client_*.deb "$dest"
    rm -rf "$tmp"
  fi
  "$bin" version --client >/dev/null 2>&1 || die "$bin does not run"
  echo "$bin"
}

cmd=${1:-}; DIR=${2:-}
case "$cmd" in
  build) build ;;
  up) [ -n "$DIR" ] || die "usage: $0 up DIR"; up ;;
  down) [ -n "$DIR" ] || die "usage: $0 down DIR"; down ;;
  status) [ -n "$DIR" ] || die "usage: $0 status DIR"; ready ;;
  kill-apiserver) [ -n "$DIR" ] || die "usage: $0 kill-apiserver DIR"; kill_apiserver ;;
  restart-apiserver) [ -n "$DIR" ] || die "usage: $0 restart-apiserver DIR"; restart_apiserver ;;
  advance-etcd) [ -n "$DIR" ] || die "usage: $0 advance-etcd DIR"; advance_etcd ;;
  legacy-kubectl) legacy_kubectl ;;
  *) echo "usage: $0 build | up DIR | down DIR | status DIR | kill-apiserver DIR | restart-apiserver DIR | advance-etcd DIR | legacy-kubectl" >&2; exit 2 ;;
esac
