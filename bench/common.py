"""Helpers the benchmark scripts share: the repository root, control planes from
scripts/cluster.sh, kubectl, and starting a release vkubelet. Only the repository's own files are
used (no file outside the clone)."""
import json, os, shutil, socket, subprocess, time

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


def run_vkubelet(kc, binary, node, workdir, metrics_port, provider="sim", provider_config=None, log_level="warn"):
    """Starts `vkubelet run` for one node (release build) and waits until the node is Ready.
    provider_config: a dict written as the node's provider config."""
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
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "VKUBELET_LOG": log_level})
    wait_node_ready(kc, node, proc, log_path)
    return proc


def stop(proc, timeout=60):
    """SIGTERM a process we started and wait for it (SIGKILL if it does not go)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill(); proc.wait()
