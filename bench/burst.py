#!/usr/bin/env python3
"""vkubelet burst benchmark: the same burst of N pods against the null kubelet (the API server's own
limit: one status patch per pod, ../shared/tools/burst.py --null-kubelet) and against vkubelet with
the sim provider, in one run on one control plane, printed side by side with ratios.

usage: bench/burst.py [--n 1000] [--n 10000] [--keep-cluster] [--json FILE]

Measures per run: create->Running latency p50/p90/p99/max, pods/s to all Running, delete-to-gone
time; for vkubelet also its RSS and CPU seconds over the burst and API writes per pod (from its
own /metrics, vkubelet_api_requests_total by verb).
"""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BURST = os.environ.get("BURST_PY", os.path.join(ROOT, "..", "shared", "tools", "burst.py"))


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def free_port():
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def kubectl(kc, *args, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", kc, *args], input=stdin, text=True, capture_output=True)


def burst(kc, node, n, ns, pid=None, null=False, timeout=900):
    cmd = [sys.executable, BURST, "--kubeconfig", kc, "--node", node, "--n", str(n), "--ns", ns,
           "--timeout", str(timeout)]
    if pid: cmd += ["--pid", str(pid)]
    if null: cmd += ["--null-kubelet"]
    out = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout * 3 + 60)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"burst.py failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    kubectl(kc, "delete", "namespace", ns, "--wait=false")
    return json.loads(lines[-1])


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    writes = 0.0
    for m in re.finditer(r'^vkubelet_api_requests_total\{verb="(\w+)",code="[^"]*"\} (\d+)', text, re.M):
        if m.group(1) in ("POST", "PUT", "PATCH", "DELETE"):
            writes += float(m.group(2))
    patches = sum(float(v) for v in re.findall(r'^vkubelet_pod_status_patches_total\{[^}]*\} (\d+)', text, re.M))
    return writes, patches


def ensure_node(kc, name):
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"bench": "null"}}}
    kubectl(kc, "apply", "-f", "-", stdin=json.dumps(node))


def run_vkubelet(kc, binary, node, workdir, metrics_port):
    log = open(os.path.join(workdir, f"{node}.log"), "w")
    proc = subprocess.Popen([binary, "run", "--kubeconfig", kc, "--node-name", node, "--provider", "sim",
                             "--metrics-addr", f"127.0.0.1:{metrics_port}", "--kubelet-port", "0",
                             "--kubelet-bind-address", "127.0.0.1"],
                            stdout=log, stderr=log, env={**os.environ, "VKUBELET_LOG": "warn"})
    for _ in range(300):
        r = kubectl(kc, "get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        if r.stdout.strip() == "True": return proc
        if proc.poll() is not None: raise SystemExit(f"vkubelet exited; see {log.name}")
        time.sleep(0.2)
    raise SystemExit("vkubelet node did not become Ready")


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, action="append", help="pods per burst (repeatable); default 1000")
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--vkubelet-only", action="store_true", help="skip the null-kubelet baseline")
    ap.add_argument("--timeout", type=float, help="seconds each burst may take (default: 60 + N/25)")
    a = ap.parse_args()
    sizes = a.n or [1000]
    if not os.path.exists(BURST):
        raise SystemExit(f"{BURST} not found (set BURST_PY)")
    sh(os.path.join(ROOT, "scripts", "cluster.sh"), "build")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "vkubelet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "vkubelet")
    cdir = os.path.join(ROOT, "target", "bench-cluster")
    subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "down", cdir], capture_output=True)
    shutil.rmtree(cdir, ignore_errors=True)
    kc = sh(os.path.join(ROOT, "scripts", "cluster.sh"), "up", cdir).strip().splitlines()[-1]
    workdir = tempfile.mkdtemp(prefix="vkubelet-bench-")
    results = []
    try:
        ensure_node(kc, "null-kubelet")
        for n in sizes:
            timeout = a.timeout or 60 + n / 25
            # vkubelet first: a baseline that stalls (its watch can be dropped by the API server
            # as a slow consumer at large N) leaves pods behind that would load the second run.
            port = free_port()
            node = f"vk-bench-{n}"
            proc = run_vkubelet(kc, binary, node, workdir, port)
            w0, p0 = scrape(port)
            vk = burst(kc, node, n, f"vk-{n}", pid=proc.pid, timeout=timeout)
            w1, p1 = scrape(port)
            proc.terminate(); proc.wait(timeout=30)
            kubectl(kc, "delete", "node", node, "--wait=false")
            base = {} if a.vkubelet_only else burst(kc, "null-kubelet", n, f"null-{n}", null=True, timeout=timeout)
            vk["api_writes_per_pod"] = round((w1 - w0) / n, 2)
            vk["status_patches_per_pod"] = round((p1 - p0) / n, 2)
            results.append({"n": n, "null_kubelet": base, "vkubelet": vk,
                            "throughput_ratio": ratio(vk["pods_per_s"], base.get("pods_per_s")),
                            "p99_ratio": ratio(vk["lat_p99_ms"], base.get("lat_p99_ms")),
                            "delete_ratio": ratio(vk.get("delete_to_gone_s"), base.get("delete_to_gone_s"))})
    finally:
        if not a.keep_cluster:
            subprocess.run([os.path.join(ROOT, "scripts", "cluster.sh"), "down", cdir], capture_output=True)
    cols = ["pods_per_s", "to_all_running_s", "lat_p50_ms", "lat_p90_ms", "lat_p99_ms", "lat_max_ms",
            "delete_to_gone_s", "vk_rss_mb", "vk_cpu_s_burst", "api_writes_per_pod", "status_patches_per_pod"]
    for r in results:
        print(f"\n== N={r['n']} ==")
        print(f"{'metric':<24}{'null-kubelet':>14}{'vkubelet':>12}{'ratio':>8}")
        for c in cols:
            b, v = r["null_kubelet"].get(c), r["vkubelet"].get(c)
            print(f"{c:<24}{str(b if b is not None else '-'):>14}{str(v if v is not None else '-'):>12}"
                  f"{str(ratio(v, b) or '-'):>8}")
        print(f"all running: null={r['null_kubelet'].get('all_running')} vkubelet={r['vkubelet']['all_running']}; "
              f"throughput ratio {r['throughput_ratio']}, p99 ratio {r['p99_ratio']}")
    if a.json:
        with open(a.json, "w") as f: json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
