#!/usr/bin/env python3
"""vkubelet burst benchmark (`make bench`): the same burst of N pods, from the same Rust load
generator (crates/vk-bench), against vkubelet and against the null kubelet (vk-bench
null-kubelet: one status write and one final delete per pod, the API server's own limit), in one
run on fresh control planes, printed side by side with ratios, written as JSON with a PNG plot
of pods Running over time next to it.

usage: bench/burst.py [--n 1000 --n 10000] [--kube] [--out DIR] [--concurrency 128]
                      [--no-sweep] [--no-plot] [--keep-cluster] [--expire-watches-at 0.5]

Modes:
  default  vkubelet on the `sim` provider (zero start latency) on cluster A.
  --kube   (BENCH_KUBE=1) issue 12's A→B benchmark: vkubelet-A on the `kube` provider bursts
           into cluster B, whose pods are run by vkubelet-B on the `sim` provider; writes are
           counted on A and on B. The baseline is still the null kubelet on A.

--expire-watches-at F (sim mode): once F×N creates of a burst are answered, kill -9 cluster A's
API server, move etcd on and start it again (scripts/cluster.sh kill-apiserver, advance-etcd,
restart-apiserver), in both runs: every watch resumed on the new API server has expired and
lists again. vkubelet's own metrics then show its relists, their duration, its backend creates
and status writes (issue 15: a watch that expires at 100k relists without stalling or
double-processing). The API server's CPU and RSS are not reported in such a run (its pid
changes); its write counters are counted before and after the outage.

Control-plane settings reach scripts/cluster.sh through the environment (MAX_INFLIGHT,
MAX_MUT_INFLIGHT, SCHED_QPS, CM_QPS): e.g. `MAX_MUT_INFLIGHT=400 make bench N=100000`.
"""
import argparse, datetime, json, os, shlex, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

VK_BENCH = os.path.join(c.RELEASE, "vk-bench")
VKUBELET = os.path.join(c.RELEASE, "vkubelet")
# Room for every pod of the largest burst on one node.
def sim_config(n):
    return {"capacity": {"pods": str(max(2 * n, 10000)), "cpu": str(max(n, 1000)), "memory": f"{max(n // 50, 4)}Ti"}}


def uptime():
    return subprocess.run(["uptime"], text=True, capture_output=True).stdout.strip()


def expire_watches_command(cdir):
    """Shell command: kill -9 cdir's API server, advance etcd, start the API server again."""
    cl = shlex.quote(c.CLUSTER_SH)
    d = shlex.quote(cdir)
    return (f"{cl} kill-apiserver {d} && {cl} advance-etcd {d} && "
            f"RESTART_WAIT=900 {cl} restart-apiserver {d}")


def vkubelet_metrics(port, node):
    """vkubelet's own counters for node after a burst (its /metrics on port)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    def total(name, *needles):
        v = 0.0
        for line in text.splitlines():
            if line.startswith(name) and f'node="{node}"' in line and all(x in line for x in needles):
                v += float(line.rsplit(" ", 1)[1])
        return v
    return {
        "pod_watch_lists": total("vkubelet_pod_watch_lists_total{"),
        "pod_watch_list_seconds_sum": round(total("vkubelet_pod_watch_list_duration_seconds_sum{"), 2),
        "pods_created": total("vkubelet_pods_created_total{"),
        "status_patches": total("vkubelet_pod_status_patches_total{"),
        "reconciles_done": total("vkubelet_reconcile_duration_seconds_count{", 'outcome="done"'),
    }


def burst(kc, node, n, label, ns, out_dir, pids, concurrency, metrics=(), timeout=None, fault=None):
    path = os.path.join(out_dir, f"{label}-{n}.json")
    cmd = [VK_BENCH, "burst", "--kubeconfig", kc, "--node", node, "--n", str(n), "--namespace", ns,
           "--label", label, "--concurrency", str(concurrency), "--json", path]
    if fault:
        at, command = fault
        cmd += ["--fault-at-created", str(at), "--fault-command", command]
    for role, pid in pids.items():
        cmd += ["--pid", f"{role}={pid}"]
    for name, mkc in metrics:
        cmd += ["--metrics", f"{name}={mkc}"]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    load = uptime()
    print(f"  {label} N={n}: {load}", flush=True)
    r = subprocess.run(cmd, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not os.path.exists(path):
        raise SystemExit(f"vk-bench burst failed ({r.returncode}):\n{r.stderr[-3000:]}")
    with open(path) as f:
        report = json.load(f)
    report["uptime"] = load
    if r.returncode != 0:
        print(f"  warning: {label} N={n} incomplete:\n{r.stderr[-1500:]}", flush=True)
    return report


def ratio(a, b):
    return round(a / b, 2) if a and b else None


def get(d, *path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


# (metric label, path into a burst report)
ROWS = [
    ("pods/s to all Running", ("pods_per_s",)),
    ("create→Running p50 (ms)", ("create_to_running", "p50_ms")),
    ("create→Running p90 (ms)", ("create_to_running", "p90_ms")),
    ("create→Running p99 (ms)", ("create_to_running", "p99_ms")),
    ("create→Running max (ms)", ("create_to_running", "max_ms")),
    ("delete→gone, all (s)", ("delete_to_gone_s",)),
    ("delete→gone p99 (ms)", ("delete_to_gone", "p99_ms")),
    ("kubelet writes/pod on A", ("kubelet_writes_per_pod", "A", "total")),
    ("  PATCH pods/status", ("kubelet_writes_per_pod", "A", "PATCH pods/status")),
    ("  DELETE pods (final)", ("kubelet_writes_per_pod", "A", "DELETE pods")),
    ("  POST events", ("kubelet_writes_per_pod", "A", "POST events")),
    ("kubelet peak RSS (MB)", ("processes", "kubelet", "peak_rss_mb")),
    ("kubelet steady RSS (MB)", ("processes", "kubelet", "steady_rss_mb")),
    ("kubelet CPU s, burst", ("processes", "kubelet", "cpu_s_burst")),
    ("kubelet CPU s, delete", ("processes", "kubelet", "cpu_s_delete")),
    ("apiserver cores, burst", ("processes", "apiserver", "cores_burst")),
    ("etcd cores, burst", ("processes", "etcd", "cores_burst")),
    ("generator cores, creating", ("generator", "cores_create")),
    ("creates/s", ("generator", "create_rate_per_s")),
    ("create request p99 (ms)", ("generator", "create_request", "p99_ms")),
]
FAULT_ROWS = [
    ("fault at (s after 1st create)", ("fault", "started_s")),
    ("fault took (s)", ("fault", "took_s")),
    ("generator watch lists", ("generator", "observer_lists")),
    ("vkubelet pod-watch lists", ("vkubelet_metrics", "pod_watch_lists")),
    ("  list seconds, all lists", ("vkubelet_metrics", "pod_watch_list_seconds_sum")),
    ("vkubelet backend creates", ("vkubelet_metrics", "pods_created")),
    ("vkubelet status patches", ("vkubelet_metrics", "status_patches")),
]
KUBE_ROWS = [
    ("writes/pod on B (all)", ("api_writes_per_pod", "B", "total")),
    ("vkubelet-B peak RSS (MB)", ("processes", "kubelet_b", "peak_rss_mb")),
    ("apiserver-B cores, burst", ("processes", "apiserver_b", "cores_burst")),
]


def table(entry, rows):
    vk, base = entry["vkubelet"], entry["null_kubelet"]
    lines = [f"{'metric':<28}{'null kubelet':>14}{'vkubelet':>12}{'ratio':>8}"]
    for name, path in rows:
        b, v = get(base, *path), get(vk, *path)
        lines.append(f"{name:<28}{str(b if b is not None else '-'):>14}{str(v if v is not None else '-'):>12}"
                     f"{str(ratio(v, b) or '-'):>8}")
    return "\n".join(lines)


def wait_empty(kc, ns, tries=600):
    """Waits until ns on kc holds no pods (the kube provider's backend between runs)."""
    for _ in range(tries):
        r = c.kubectl(kc, "get", "pods", "-n", ns, "--no-headers", "--ignore-not-found")
        if r.returncode == 0 and not r.stdout.strip():
            return True
        time.sleep(1)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, action="append", help="pods per burst (repeatable); default 1000 and 10000")
    ap.add_argument("--kube", action="store_true", default=os.environ.get("BENCH_KUBE") == "1",
                    help="A→B through the kube provider (BENCH_KUBE=1)")
    ap.add_argument("--out", help="output directory (default target/bench/<UTC time>)")
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "128")))
    ap.add_argument("--no-sweep", action="store_true", help="skip the generator saturation sweep")
    ap.add_argument("--sweep-pods", type=int, default=2000, help="pods per sweep level")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument("--expire-watches-at", type=float, metavar="F",
                    help="kill -9 A's API server once F×N creates are answered, advance etcd, restart it (sim mode)")
    a = ap.parse_args()
    if a.expire_watches_at is not None and (a.kube or not 0 < a.expire_watches_at < 1):
        ap.error("--expire-watches-at takes a fraction in (0, 1), in sim mode")
    sizes = a.n or [1000, 10000]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.abspath(a.out or os.path.join(c.ROOT, "target", "bench", stamp))
    os.makedirs(out_dir, exist_ok=True)
    mode = "kube" if a.kube else "sim"

    c.sh(c.CLUSTER_SH, "build")
    c.build("vkubelet", "vk-bench")
    cdir_a = os.path.join(c.ROOT, "target", "bench", "cluster-a")
    cdir_b = os.path.join(c.ROOT, "target", "bench", "cluster-b")
    settings = {k: os.environ[k] for k in ("MAX_INFLIGHT", "MAX_MUT_INFLIGHT", "SCHED_QPS", "CM_QPS") if k in os.environ}
    print(f"control plane A (settings {settings or 'default'})", flush=True)
    kc = c.cluster_up(cdir_a, settings)
    kc_b = None
    if a.kube:
        # B's scheduler binds every backend pod: give it the rate of the burst.
        kc_b = c.cluster_up(cdir_b, {"SCHED_QPS": "1000", **settings})
    workdir = tempfile.mkdtemp(prefix="vkubelet-bench-")
    results = {"mode": mode, "date": stamp, "concurrency": a.concurrency, "cluster_settings": settings,
               "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=c.ROOT, text=True,
                                     capture_output=True).stdout.strip(),
               "uptime_start": uptime(), "expire_watches_at": a.expire_watches_at, "runs": []}
    procs = []
    try:
        server = {"apiserver": c.cluster_pid(cdir_a, "kube-apiserver"), "etcd": c.cluster_pid(cdir_a, "etcd")}
        fault = None
        if not a.no_sweep:
            print("saturation sweep (creates at rising concurrency, no kubelet)", flush=True)
            path = os.path.join(out_dir, "sweep.json")
            cmd = [VK_BENCH, "sweep", "--kubeconfig", kc, "--pods", str(a.sweep_pods), "--concurrency", "8,32,128,512",
                   "--json", path] + [f"--pid={k}={v}" for k, v in server.items()]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(path) as f:
                results["sweep"] = json.load(f)
            for s in results["sweep"]:
                procs_txt = ", ".join(f"{r} {cores} cores" for r, _, cores in s["processes"])
                print(f"  concurrency {s['concurrency']:>4}: {s['create_rate_per_s']:>7} creates/s, "
                      f"p50 {s['create_request']['p50_ms']} ms, p99 {s['create_request']['p99_ms']} ms, "
                      f"generator {s['generator_cores']} cores, {procs_txt}", flush=True)
        vk_b = None
        managed = "cce-burst-bench"
        if a.kube:
            server.update({"apiserver_b": c.cluster_pid(cdir_b, "kube-apiserver"), "etcd_b": c.cluster_pid(cdir_b, "etcd")})
            vk_b = c.run_vkubelet(kc_b, VKUBELET, "vk-b", workdir, 0, provider="sim",
                                  provider_config=sim_config(max(sizes)), profiled=False)
            procs.append(vk_b)
        if a.expire_watches_at is not None:
            # The bursts restart the API server, which then has another pid: measure etcd only.
            server.pop("apiserver")
        for n in sizes:
            print(f"N={n} ({mode})", flush=True)
            vk_port = 0
            if a.expire_watches_at is not None:
                fault = (max(1, int(a.expire_watches_at * n)), expire_watches_command(cdir_a))
                vk_port = c.free_port()
            # vkubelet first, then the baseline, each on its own node and namespace.
            if a.kube:
                node = f"vk-a-{n}"
                cfg = {"kubeconfig": kc_b, "clusterID": "bench",
                       "nodeSelector": {"kubernetes.io/hostname": "vk-b"},
                       "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                       "capacity": {"pods": str(max(2 * n, 10000)), "cpu": str(max(n, 1000)), "memory": "100Ti"},
                       "qps": 0}
                vk = c.run_vkubelet(kc, VKUBELET, node, workdir, 0, provider="kube", provider_config=cfg)
                pids = {"kubelet": vk.measured_pid, "kubelet_b": vk_b.measured_pid, **server}
                metrics = [("B", kc_b)]
            else:
                node = f"vk-bench-{n}"
                vk = c.run_vkubelet(kc, VKUBELET, node, workdir, vk_port, provider="sim",
                                    provider_config=sim_config(n))
                pids = {"kubelet": vk.measured_pid, **server}
                metrics = []
            procs.append(vk)
            vk_report = burst(kc, node, n, "vkubelet", f"vk-{n}", out_dir, pids, a.concurrency, metrics,
                              fault=fault)
            if vk_port:
                vk_report["vkubelet_metrics"] = vkubelet_metrics(vk_port, node)
                print(f"  vkubelet's own counters: {vk_report['vkubelet_metrics']}", flush=True)
            c.stop(vk)
            c.kubectl(kc, "delete", "node", node, "--wait=false")
            if a.kube and not wait_empty(kc_b, managed):
                print(f"  warning: backend namespace {managed} still has pods", flush=True)
            null_node = f"null-kubelet-{n}"
            log = open(os.path.join(workdir, f"{null_node}.log"), "w")
            null = subprocess.Popen([VK_BENCH, "null-kubelet", "--kubeconfig", kc, "--node", null_node,
                                     "--concurrency", str(a.concurrency)], stdout=log, stderr=log)
            procs.append(null)
            pids = {"kubelet": null.pid, **{k: v for k, v in server.items() if not k.endswith("_b")}}
            time.sleep(1)  # its watch is open before the first create
            base = burst(kc, null_node, n, "null-kubelet", f"null-{n}", out_dir, pids, a.concurrency,
                         fault=fault)
            c.stop(null)
            c.kubectl(kc, "delete", "node", null_node, "--wait=false")
            entry = {"n": n, "mode": mode, "vkubelet": vk_report, "null_kubelet": base, "ratios": {
                "throughput": ratio(vk_report["pods_per_s"], base["pods_per_s"]),
                "p50": ratio(get(vk_report, "create_to_running", "p50_ms"), get(base, "create_to_running", "p50_ms")),
                "p99": ratio(get(vk_report, "create_to_running", "p99_ms"), get(base, "create_to_running", "p99_ms")),
                "delete_to_gone": ratio(vk_report["delete_to_gone_s"], base["delete_to_gone_s"]),
                "kubelet_writes_per_pod": ratio(get(vk_report, "kubelet_writes_per_pod", "A", "total"),
                                                get(base, "kubelet_writes_per_pod", "A", "total")),
                "peak_rss": ratio(get(vk_report, "processes", "kubelet", "peak_rss_mb"),
                                  get(base, "processes", "kubelet", "peak_rss_mb")),
                "cpu_s_burst": ratio(get(vk_report, "processes", "kubelet", "cpu_s_burst"),
                                     get(base, "processes", "kubelet", "cpu_s_burst")),
            }}
            kubelet = vk_report["processes"]["kubelet"]
            if n:
                entry["vkubelet_rss_bytes_per_pod"] = round(
                    (kubelet["steady_rss_mb"] - kubelet["idle_rss_mb"]) * 1e6 / n)
            results["runs"].append(entry)
            print(table(entry, ROWS + (KUBE_ROWS if a.kube else []) + (FAULT_ROWS if fault else [])), flush=True)
            if "vkubelet_rss_bytes_per_pod" in entry:
                print(f"vkubelet RSS per pod (steady − idle) / N: {entry['vkubelet_rss_bytes_per_pod']} bytes", flush=True)
    finally:
        for p in procs:
            c.stop(p)
        if not a.keep_cluster:
            c.cluster_down(cdir_a)
            if a.kube:
                c.cluster_down(cdir_b)
    results["uptime_end"] = uptime()
    path = os.path.join(out_dir, f"bench-{mode}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {path}")
    if not a.no_plot:
        png = path[:-5] + ".png"
        try:
            py = plot_python()
            subprocess.run([py, os.path.join(c.ROOT, "bench", "plot.py"), path, png], check=True)
            print(f"plot: {png}")
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"plot skipped: {e}")
    latest = os.path.join(c.ROOT, "target", "bench", "latest")
    if os.path.islink(latest) or not os.path.exists(latest):
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(out_dir, latest)


def plot_python():
    """A Python with matplotlib: the system's, else a venv in target/bench/venv (pip, PyPI)."""
    if subprocess.run([sys.executable, "-c", "import matplotlib"], capture_output=True).returncode == 0:
        return sys.executable
    venv = os.path.join(c.ROOT, "target", "bench", "venv")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py) or subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        print("installing matplotlib into target/bench/venv", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    return py


if __name__ == "__main__":
    main()
