#!/usr/bin/env python3
"""Resolver memory benchmark: vkubelet's RSS must follow the pods on its node, not the cluster.

usage: bench/resolver_memory.py [--objects 10000] [--pods 100] [--keep-cluster] [--json FILE]

1. Start vkubelet (sim provider) and run --pods pods that reference one ConfigMap and one Secret
   (env and volumes) in namespace mem-pods. Measure RSS (median of samples over a few seconds).
2. Create --objects ConfigMaps and as many Secrets (1 KiB each) spread over 10 namespaces where
   none of our pods live. Measure RSS again: it must not move by more than a few MB.
3. Create --objects/5 more ConfigMaps and Secrets in mem-pods itself (watched, but unreferenced):
   they stream through the watch and are dropped. Measure RSS again.

Prints the three RSS figures, the deltas and the resolver's own counters from /metrics.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as b  # noqa: E402  (shared helpers: kubectl, cluster, vkubelet launch)

ROOT = b.ROOT


def rss_mb(pid, samples=10, every=0.5):
    values = []
    for _ in range(samples):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    values.append(int(line.split()[1]) / 1024)
        time.sleep(every)
    return round(statistics.median(values), 1)


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(rf'^{name}\{{[^}}]*\}} (\S+)', text, re.M))


def create_objects(kc, ns, count, prefix):
    """count ConfigMaps and count Secrets of ~1 KiB in ns, in chunks of 500 per kubectl call."""
    b.kubectl(kc, "create", "namespace", ns)
    payload = "x" * 1024
    for start in range(0, count, 500):
        items = []
        for i in range(start, min(start + 500, count)):
            items.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"{prefix}-cm-{i}", "namespace": ns}, "data": {"k": payload}})
            items.append({"apiVersion": "v1", "kind": "Secret",
                          "metadata": {"name": f"{prefix}-s-{i}", "namespace": ns}, "stringData": {"k": payload}})
        r = b.kubectl(kc, "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        if r.returncode != 0:
            raise SystemExit(f"creating objects failed: {r.stderr[-2000:]}")


def run_pods(kc, node, n):
    ns = "mem-pods"
    b.kubectl(kc, "create", "namespace", ns)
    for _ in range(120):  # 1.20: pods need the default ServiceAccount's token Secret first
        r = b.kubectl(kc, "-n", ns, "get", "serviceaccount", "default", "-o", "jsonpath={.secrets[0].name}")
        if r.stdout.strip():
            break
        time.sleep(0.5)
    objs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": ns},
             "data": {"mode": "fast", "conf": "y" * 2048}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app", "namespace": ns},
             "stringData": {"password": "hunter2"}}]
    for i in range(n):
        objs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": ns},
                     "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                              "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"],
                                              "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "mode"}}},
                                                      {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "app", "key": "password"}}}]}],
                              "volumes": [{"name": "cfg", "configMap": {"name": "app"}},
                                          {"name": "sec", "secret": {"secretName": "app"}}]}})
    r = b.kubectl(kc, "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    if r.returncode != 0:
        raise SystemExit(f"creating pods failed: {r.stderr[-2000:]}")
    for _ in range(600):
        r = b.kubectl(kc, "-n", ns, "get", "pods", "-o", "jsonpath={.items[*].status.phase}")
        if r.stdout.split().count("Running") == n:
            return
        time.sleep(0.5)
    raise SystemExit("pods did not all reach Running")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=10000)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    b.sh(os.path.join(ROOT, "scripts", "cluster.sh"), "build")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "vkubelet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "vkubelet")
    cdir = os.path.join(ROOT, "target", "bench-cluster")
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "down", cdir], capture_output=True)
    shutil.rmtree(cdir, ignore_errors=True)
    kc = b.sh(os.path.join(ROOT, "scripts", "cluster.sh"), "up", cdir).strip().splitlines()[-1]
    workdir = tempfile.mkdtemp(prefix="vkubelet-membench-")
    proc = None
    try:
        port = b.free_port()
        node = "vk-mem"
        proc = b.run_vkubelet(kc, binary, node, workdir, port)
        run_pods(kc, node, a.pods)
        time.sleep(3)
        base = rss_mb(proc.pid)
        kept0 = metric(port, "vkubelet_resolver_kept_objects")
        per_ns = a.objects // 10
        for i in range(10):
            create_objects(kc, f"mem-noise-{i}", per_ns, "noise")
        time.sleep(5)
        other = rss_mb(proc.pid)
        kept1 = metric(port, "vkubelet_resolver_kept_objects")
        create_objects_same = a.objects // 5
        # mem-pods exists already; create_objects' namespace create fails harmlessly.
        create_objects(kc, "mem-pods", create_objects_same, "unref")
        time.sleep(5)
        same = rss_mb(proc.pid)
        kept2 = metric(port, "vkubelet_resolver_kept_objects")
        result = {
            "pods": a.pods, "objects_other_namespaces": 2 * per_ns * 10,
            "objects_same_namespace_unreferenced": 2 * create_objects_same,
            "rss_mb_baseline": base, "rss_mb_after_other_namespaces": other,
            "rss_mb_after_same_namespace": same,
            "delta_other_mb": round(other - base, 1), "delta_same_mb": round(same - base, 1),
            "resolver_kept_objects": [kept0, kept1, kept2],
            "resolver_namespace_watches": metric(port, "vkubelet_resolver_namespace_watches"),
        }
        print(json.dumps(result, indent=2))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        if not a.keep_cluster:
            subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "down", cdir], capture_output=True)


if __name__ == "__main__":
    main()
