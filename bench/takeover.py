#!/usr/bin/env python3
"""HA takeover benchmark (a report, not a test): two `vkubelet run --leader-elect` replicas for one
sim node at the default election settings (lease 15 s, renew deadline 10 s, retry 2 s); kill -9 of
the leader, then the time until
  - the other replica holds the node's election Lease (vkubelet-<node>),
  - the node's heartbeat Lease (kube-node-lease) is renewed by the new leader,
  - a pod created at the moment of the kill is Running (the new leader's first pod status).
Target: each <= lease duration + 5 s.

usage: bench/takeover.py [--runs 3] [--pods 100] [--json FILE]
Starts its own control plane with scripts/cluster.sh (under target/bench-takeover) unless
--kubeconfig is given; uses target/release/vkubelet (make build) or target/debug/vkubelet.
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kubectl(kc, *args, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=stdin, text=True,
                          capture_output=True)


def get_json(kc, *args):
    r = kubectl(kc, "get", *args, "-o", "json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def binary():
    for p in ("target/release/vkubelet", "target/debug/vkubelet"):
        if os.path.exists(os.path.join(ROOT, p)):
            return os.path.join(ROOT, p)
    sys.exit("build vkubelet first (make build)")


def pod(name, node, ns):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"bench": "takeover"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                     "tolerations": [{"operator": "Exists"}]}}


def start(kc, node, state, log, ns):
    cfg = os.path.join(state, "sim.json")
    with open(cfg, "w") as f:
        json.dump({"stateDir": os.path.join(state, "sim")}, f)
    return subprocess.Popen([binary(), "run", "--kubeconfig", kc, "--node-name", node,
                             "--provider", "sim", "--provider-config", cfg, "--metrics-addr", "",
                             "--kubelet-port", "0", "--kubelet-bind-address", "127.0.0.1",
                             "--leader-elect", "--leader-elect-namespace", ns],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT)


def holder(kc, ns, node):
    l = get_json(kc, "lease", "-n", ns, f"vkubelet-{node}")
    return (l or {}).get("spec", {}).get("holderIdentity") or None


def wait(pred, timeout=120, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise SystemExit("timed out")


def one_run(kc, i, pods, work):
    ns, node = f"takeover-{i}-{os.getpid()}", f"vk-takeover-{i}"
    kubectl(kc, "create", "namespace", ns)
    state = os.path.join(work, f"run{i}")
    os.makedirs(state, exist_ok=True)
    a = start(kc, node, state, os.path.join(state, "a.log"), ns)
    wait(lambda: (holder(kc, ns, node) or "").find(f"_{a.pid}_") >= 0)
    b = start(kc, node, state, os.path.join(state, "b.log"), ns)
    docs = [pod(f"p{j}", node, ns) for j in range(pods)]
    kubectl(kc, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    def all_running():
        l = get_json(kc, "pods", "-n", ns, "-l", "bench=takeover")
        return l and sum(p.get("status", {}).get("phase") == "Running" for p in l["items"]) == pods
    wait(all_running, timeout=300, step=0.5)
    hb = get_json(kc, "lease", "-n", "kube-node-lease", node)["spec"]["renewTime"]
    t0 = time.monotonic()
    a.send_signal(signal.SIGKILL)
    a.wait()
    kubectl(kc, "apply", "-f", "-", stdin=json.dumps(pod("after-kill", node, ns)))
    res = {}
    while len(res) < 3 and time.monotonic() - t0 < 120:
        now = time.monotonic() - t0
        if "lease" not in res and (holder(kc, ns, node) or "").find(f"_{b.pid}_") >= 0:
            res["lease"] = now
        if "lease" in res and "heartbeat" not in res:
            l = get_json(kc, "lease", "-n", "kube-node-lease", node)
            if l and l["spec"].get("renewTime") != hb:
                res["heartbeat"] = now
        if "pod" not in res:
            p = get_json(kc, "pod", "-n", ns, "after-kill")
            if p and p.get("status", {}).get("phase") == "Running":
                res["pod"] = now
        time.sleep(0.1)
    b.send_signal(signal.SIGTERM)
    b.wait()
    kubectl(kc, "delete", "namespace", ns, "--wait=false")
    kubectl(kc, "delete", "node", node, "--wait=false")
    return {k: round(v, 2) for k, v in res.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--kubeconfig")
    ap.add_argument("--json")
    args = ap.parse_args()
    kc, cluster = args.kubeconfig, None
    if not kc:
        cluster = os.path.join(ROOT, "target", "bench-takeover")
        shutil.rmtree(cluster, ignore_errors=True)
        kc = subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "up", cluster], check=True,
                            text=True, capture_output=True).stdout.strip().splitlines()[-1]
    work = tempfile.mkdtemp(prefix="vk-takeover-")
    try:
        runs = [one_run(kc, i, args.pods, work) for i in range(args.runs)]
    finally:
        if cluster:
            subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "down", cluster])
    out = {"lease_duration_s": 15, "renew_deadline_s": 10, "retry_period_s": 2, "runs": runs,
           "load": open("/proc/loadavg").read().split()[:3]}
    for key in ("lease", "heartbeat", "pod"):
        vals = [r[key] for r in runs if key in r]
        out[f"max_{key}_s"] = max(vals) if vals else None
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
