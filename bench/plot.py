#!/usr/bin/env python3
"""Plot of a `make bench` result: pods Running over time (and pods created, dashed), vkubelet
beside the null kubelet, one panel per N; a second row shows pods gone after the first delete.

usage: bench/plot.py RESULTS.json OUT.png   (needs matplotlib; bench/burst.py provides a venv)
"""
import json, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"vkubelet": "tab:blue", "null_kubelet": "tab:gray"}
NAMES = {"vkubelet": "vkubelet", "null_kubelet": "null kubelet"}


def main(src, dst):
    with open(src) as f:
        res = json.load(f)
    runs = res["runs"]
    fig, axes = plt.subplots(2, len(runs), figsize=(5.2 * len(runs), 7), squeeze=False)
    vk_name = "vkubelet A→B (kube provider)" if res.get("mode") == "kube" else "vkubelet (sim provider)"
    for col, run in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        for key in ("null_kubelet", "vkubelet"):
            r = run[key]
            label = vk_name if key == "vkubelet" else NAMES[key]
            tl = r["timeline"]
            if tl["running"]:
                t, n = zip(*tl["running"])
                top.step([0, *t], [0, *n], where="post", color=COLORS[key],
                         label=f"{label}: Running ({r['pods_per_s']} pods/s)")
            if tl["created"]:
                t, n = zip(*tl["created"])
                top.step([0, *t], [0, *n], where="post", color=COLORS[key], linestyle=":", linewidth=1,
                         label=f"{NAMES[key]} run: created")
            if tl["gone"]:
                t, n = zip(*tl["gone"])
                bottom.step([0, *t], [0, *n], where="post", color=COLORS[key],
                            label=f"{label}: gone ({r['delete_to_gone_s']} s)")
        top.set_title(f"N = {run['n']:,}: pods Running after the first create")
        top.set_xlabel("seconds since the first create")
        top.set_ylabel("pods")
        top.legend(fontsize=7, loc="lower right")
        top.grid(alpha=0.3)
        bottom.set_title(f"N = {run['n']:,}: pods gone after the first delete")
        bottom.set_xlabel("seconds since the first delete")
        bottom.set_ylabel("pods")
        bottom.legend(fontsize=7, loc="lower right")
        bottom.grid(alpha=0.3)
    load = res.get("uptime_start", "").split("load average:")[-1].strip()
    fig.suptitle(f"vkubelet burst benchmark: {res.get('mode')}, {res.get('date')}, git {res.get('git')}\n"
                 f"load average at start {load} (shared 2-core machine)", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
