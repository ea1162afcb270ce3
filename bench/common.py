"""Helpers the benchmark scripts share: the repository root, control planes from
scripts/cluster.sh, kubectl, and starting a release vkubelet. Only the repository's own files are
used (no file outside the clone)."""
import json, os, shlex, shutil, socket, subprocess, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_SH = os.path.join(ROOT, "scripts", "cluster.sh")
RELEASE = os.path.join(ROOT, "target", "release")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def kubectl(kc, *args, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=stdin, text=True, capture_output=True)


def build(*packages):
    """Release build of the given workspace packages (vkubelet, vk-bench), one cargo call each:
    built together, their features would be unified and vkubelet rebuilt unlike `make build`."""
    for p in packages:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", p], cwd=ROOT, check=True,
                       env={"CARGO_INCREMENTAL": "0", **os.environ})


def cluster_up(cdir, env=None):
    """A fresh control plane in cdir (removed first: a restarted stopped dir can come up without
    its controller-manager); returns the admin kubeconfig path. env: extra variables for
    scripts/cluster.sh (MAX_INFLIGHT, MAX_MUT_INFLIGHT, SCHED_QPS, CM_QPS)."""
    subprocess.run([CLUSTER_SH, "down", cdir], capture_output=True)
    shutil.rmtree(cdir, ignore_errors=True)
    out = subprocess.run([CLUSTER_SH, "up", cdir], check=True, text=True, capture_output=True,
                         env={**os.environ, **(env or {})})
    return out.stdout.strip().splitlines()[-1]


def cluster_down(cdir):
    subprocess.run([CLUSTER_SH, "down", cdir], capture_output=True)


def cluster_pid(cdir, component):
    """The pid scripts/cluster.sh recorded for kube-apiserver or etcd."""
    with open(os.path.join(cdir, f"{component}.pid")) as f:
        return int(f.read().strip())


def wait_node_ready(kc, node, proc, log_path, tries=300):
    for _ in range(tries):
        r = kubectl(kc, "get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        if r.stdout.strip() == "True":
            return
        if proc.poll() is not None:
            raise SystemExit(f"vkubelet exited; see {log_path}")
        time.sleep(0.2)
    raise SystemExit(f"node {node} did not become Ready; see {log_path}")


def run_vkubelet(kc, binary, node, workdir, metrics_port, provider="sim", provider_config=None, log_level="warn",
                 profiled=True):
    """Starts `vkubelet run` for one node (release build) and waits until the node is Ready.
    provider_config: a dict written as the node's provider config. profiled: whether BENCH_WRAP
    applies (not to the kube mode's backend vkubelet)."""
    log_path = os.path.join(workdir, f"{node}.log")
    log = open(log_path, "w")
    cmd = [binary, "run", "--kubeconfig", kc, "--node-name", node, "--provider", provider,
           "--metrics-addr", f"127.0.0.1:{metrics_port}" if metrics_port else "",
           "--kubelet-port", "0", "--kubelet-bind-address", "127.0.0.1"]
    if provider_config is not None:
        path = os.path.join(workdir, f"{node}.provider.json")
        with open(path, "w") as f:
            json.dump(provider_config, f)
        cmd += ["--provider-config", path]
    # BENCH_WRAP runs vkubelet under a profiler, e.g. BENCH_WRAP="heaptrack -o target/bench/heap"
    # (docs/testing.md, "Memory"); the process measured and stopped is then vkubelet itself.
    wrap = shlex.split(os.environ.get("BENCH_WRAP", "")) if profiled else []
    proc = subprocess.Popen(wrap + cmd, stdout=log, stderr=log, env={**os.environ, "VKUBELET_LOG": log_level})
    wait_node_ready(kc, node, proc, log_path)
    proc.measured_pid = descendant(proc.pid, "vkubelet") if wrap else proc.pid
    return proc


def descendant(pid, comm):
    """The first process named comm at or below pid (a wrapper's child)."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == comm:
                    return p
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    raise SystemExit(f"no {comm} process under pid {pid}")


def stop(proc, timeout=60):
    """SIGTERM a process we started and wait for it (SIGKILL if it does not go)."""
    if proc is None or proc.poll() is not None:
        return
    # A wrapped vkubelet (BENCH_WRAP) gets the signal itself; the wrapper then ends with it.
    os.kill(getattr(proc, "measured_pid", proc.pid), 15)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill(); proc.wait()
