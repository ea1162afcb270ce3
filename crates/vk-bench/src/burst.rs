//! One burst: create N pods bound to a node (spec.nodeName, so no scheduler in the path) with
//! many requests in flight, watch until all are Running, hold them while the kubelet settles,
//! delete them all and watch until all are gone. Measures what `make bench` reports: creates/s
//! and create-request latency (the API server's limit), create→Running and delete→gone per pod,
//! successful API writes per pod by verb (the API server's own counter), and the RSS/CPU of the
//! kubelet under test, the API server, etcd and the generator itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Notify;

use crate::apimetrics::{self, WriteCounts};
use crate::cluster::{RETRY_BUDGET, ensure_namespace, retry_delay, retryable};
use crate::procstat::{self, ProcessReport, Sampler, mb, round2};
use crate::stats::{Percentiles, cumulative};

/// Points per timeline in the JSON (enough for a smooth plot line).
const TIMELINE_POINTS: usize = 400;

pub struct BurstSpec {
    pub label: String,
    pub namespace: String,
    pub node: String,
    pub n: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub settle: Duration,
    /// Processes to measure, by role; `kubelet` is the one under test.
    pub pids: Vec<(String, u32)>,
    /// API servers whose write counters are read, by name; the first is the one the pods are
    /// created on.
    pub metrics: Vec<(String, kube::Client)>,
    /// A fault injected mid-burst.
    pub fault: Option<Fault>,
}

/// A shell command run once `at_created` creates have been answered (e.g. kill the API server,
/// move etcd on, start it again: every watch must relist). The burst goes on meanwhile; its
/// requests ride out an outage ([`RETRY_BUDGET`]).
#[derive(Clone, Debug)]
pub struct Fault {
    pub at_created: usize,
    pub command: String,
}

#[derive(Debug, Serialize)]
pub struct FaultReport {
    pub command: String,
    pub at_created: usize,
    /// Seconds from the first create to the command's start, and the command's duration.
    pub started_s: f64,
    pub took_s: f64,
    pub exit_code: Option<i32>,
    /// API servers whose write counters went back (restarted by the fault): their writes are
    /// counted before and after it, not during (the outage's edges are missed).
    pub counters_reset: Vec<String>,
}

/// Runs `fault` once `answered` reaches its mark; returns when the command has ended, with the
/// write counters of `metrics` read just before it and just after.
async fn inject(
    fault: Fault,
    answered: Arc<AtomicUsize>,
    t0: Instant,
    metrics: Vec<(String, kube::Client)>,
) -> anyhow::Result<(FaultReport, Vec<WriteCounts>, Vec<WriteCounts>)> {
    while answered.load(Ordering::Relaxed) < fault.at_created {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = scrape_all(&metrics, "before the fault").await?;
    let started = Instant::now();
    tracing::info!(command = %fault.command, "injecting the fault");
    let command = fault.command.clone();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .status()
    })
    .await
    .context("fault command task")?
    .with_context(|| format!("run fault command {:?}", fault.command))?;
    let took = started.elapsed();
    // Answered as soon as the API server is back (the command waited for it).
    let mut tries = 0;
    let after = loop {
        match scrape_all(&metrics, "after the fault").await {
            Ok(counts) => break counts,
            Err(e) if tries < 300 => {
                tries += 1;
                tracing::debug!(error = %e, "write counters after the fault");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    Ok((
        FaultReport {
            command: fault.command,
            at_created: fault.at_created,
            started_s: round2(since(t0, started)),
            took_s: round2(took.as_secs_f64()),
            exit_code: status.code(),
            counters_reset: Vec::new(),
        },
        before,
        after,
    ))
}

/// The write counters of every API server in `metrics`, in order; `when` names the moment in
/// the error.
async fn scrape_all(
    metrics: &[(String, kube::Client)],
    when: &str,
) -> anyhow::Result<Vec<WriteCounts>> {
    let mut all = Vec::with_capacity(metrics.len());
    for (name, c) in metrics {
        all.push(
            apimetrics::scrape(c)
                .await
                .with_context(|| format!("write counters of API server {name} {when}"))?,
        );
    }
    Ok(all)
}

/// The name of pod `i` of a run; the observer maps names back to indexes.
fn pod_name(i: usize) -> String {
    format!("p{i:06}")
}

fn pod_index(name: &str, n: usize) -> Option<usize> {
    name.strip_prefix('p')?.parse().ok().filter(|&i| i < n)
}

pub fn pod_manifest(name: &str, node: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "vk-bench"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "c", "image": "busybox", "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    }))?)
}

/// What a create or delete request took.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome {
    pub index: usize,
    pub done: Instant,
    /// From the first attempt's start to the final answer, retries included.
    pub seconds: f64,
    pub retries: u32,
    pub ok: bool,
}

/// Creates the pods `0..n` with `concurrency` requests in flight. Throttled (429), failed (5xx)
/// and broken requests are retried; `409 AlreadyExists` after a retry means the first attempt
/// went through.
pub async fn create_pods(
    api: &Api<Pod>,
    node: &str,
    indexes: std::ops::Range<usize>,
    concurrency: usize,
    answered: &AtomicUsize,
) -> anyhow::Result<Vec<RequestOutcome>> {
    let template = pod_manifest(&pod_name(0), node)?;
    let params = PostParams::default();
    Ok(futures::stream::iter(indexes)
        .map(|index| {
            let mut pod = template.clone();
            pod.metadata.name = Some(pod_name(index));
            let params = &params;
            async move {
                let start = Instant::now();
                let mut retries = 0;
                let ok = loop {
                    match api.create(params, &pod).await {
                        Ok(_) => break true,
                        Err(kube::Error::Api(s)) if s.code == 409 && retries > 0 => break true,
                        Err(e) if retryable(&e) && start.elapsed() < RETRY_BUDGET => {
                            retries += 1;
                            tokio::time::sleep(retry_delay(retries)).await;
                        }
                        Err(e) => {
                            tracing::warn!(pod = pod_name(index), error = %e, "create failed");
                            break false;
                        }
                    }
                };
                let done = Instant::now();
                answered.fetch_add(1, Ordering::Relaxed);
                RequestOutcome {
                    index,
                    done,
                    seconds: (done - start).as_secs_f64(),
                    retries,
                    ok,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await)
}

/// Deletes the pods `indexes` (with `params`), `concurrency` requests in flight.
pub async fn delete_pods(
    api: &Api<Pod>,
    indexes: impl Iterator<Item = usize>,
    params: &DeleteParams,
    concurrency: usize,
) -> Vec<RequestOutcome> {
    futures::stream::iter(indexes)
        .map(|index| async move {
            let name = pod_name(index);
            let start = Instant::now();
            let mut retries = 0;
            let ok = loop {
                match api.delete(&name, params).await {
                    Ok(_) => break true,
                    Err(kube::Error::Api(s)) if s.code == 404 => break true,
                    Err(e) if retryable(&e) && start.elapsed() < RETRY_BUDGET => {
                        retries += 1;
                        tokio::time::sleep(retry_delay(retries)).await;
                    }
                    Err(e) => {
                        tracing::warn!(pod = name, error = %e, "delete failed");
                        break false;
                    }
                }
            };
            let done = Instant::now();
            RequestOutcome {
                index,
                done,
                seconds: (done - start).as_secs_f64(),
                retries,
                ok,
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// What the observer's watch has seen, per pod index.
struct Observed {
    running_at: Vec<Option<Instant>>,
    gone_at: Vec<Option<Instant>>,
    present: Vec<bool>,
    /// Pods listed by the current re-list (between `Init` and `InitDone`).
    listed: Option<Vec<bool>>,
    running: usize,
    gone: usize,
    /// Completed lists: the first is the start; each later one is a watch that expired.
    lists: usize,
}

impl Observed {
    fn new(n: usize) -> Self {
        Self {
            running_at: vec![None; n],
            gone_at: vec![None; n],
            present: vec![false; n],
            listed: None,
            running: 0,
            gone: 0,
            lists: 0,
        }
    }

    fn apply(&mut self, i: usize, pod: &Pod, now: Instant) {
        if self.gone_at[i].is_some() {
            return;
        }
        self.present[i] = true;
        if let Some(listed) = &mut self.listed {
            listed[i] = true;
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if running && self.running_at[i].is_none() {
            self.running_at[i] = Some(now);
            self.running += 1;
        }
    }

    fn delete(&mut self, i: usize, now: Instant) {
        if self.gone_at[i].is_none() {
            self.gone_at[i] = Some(now);
            self.gone += 1;
        }
    }

    /// After a re-list: a pod we knew that the list no longer has was deleted while the watch
    /// was down.
    fn list_done(&mut self, now: Instant) {
        if let Some(listed) = self.listed.take() {
            for (i, in_list) in listed.into_iter().enumerate() {
                if self.present[i] && !in_list {
                    self.delete(i, now);
                }
            }
        }
        self.lists += 1;
    }
}

/// Watches the run's namespace and records when each pod was first Running and when it was gone.
struct Observer {
    state: Arc<Mutex<Observed>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Observer {
    async fn start(client: kube::Client, namespace: &str, n: usize) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(Observed::new(n)));
        let changed = Arc::new(Notify::new());
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let (shared, notify) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().labels("app=vk-bench");
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            loop {
                let event = match events.try_next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "observer watch error (re-listing)");
                        continue;
                    }
                };
                let now = Instant::now();
                let mut s = shared.lock();
                match event {
                    Event::Apply(pod) | Event::InitApply(pod) => {
                        if let Some(i) = pod.metadata.name.as_deref().and_then(|m| pod_index(m, n))
                        {
                            s.apply(i, &pod, now);
                        }
                    }
                    Event::Delete(pod) => {
                        if let Some(i) = pod.metadata.name.as_deref().and_then(|m| pod_index(m, n))
                        {
                            s.delete(i, now);
                        }
                    }
                    Event::Init => s.listed = Some(vec![false; n]),
                    Event::InitDone => s.list_done(now),
                }
                drop(s);
                notify.notify_waiters();
            }
        });
        let observer = Self {
            state,
            changed,
            task,
        };
        // Nothing is created before the first list is complete, so no event can be missed.
        observer
            .wait(Duration::from_secs(60), |s| s.lists > 0)
            .await
            .then_some(())
            .context("the observer's first list did not complete within 60 s")?;
        Ok(observer)
    }

    /// Waits until `done(state)` holds; false at the deadline.
    async fn wait(&self, timeout: Duration, done: impl Fn(&Observed) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if done(&self.state.lock()) {
                return true;
            }
            // The timeout only bounds each wait for a wake-up that a notify between the check
            // and `notified` could have raced past.
            let wake = tokio::time::Instant::now() + Duration::from_millis(500);
            if tokio::time::timeout_at(wake.min(deadline), notified)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return done(&self.state.lock());
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Serialize)]
pub struct Generator {
    pub concurrency: usize,
    /// Creates per second while creating (what the API server accepted).
    pub create_rate_per_s: f64,
    pub create_request: Percentiles,
    pub create_retries: u64,
    pub create_failures: usize,
    pub delete_request: Percentiles,
    pub delete_failures: usize,
    /// The generator's own CPU (and the cores it kept busy) while creating: far below what
    /// the API server used shows that the API server, not the generator, was the limit.
    pub cpu_s_create: f64,
    pub cores_create: f64,
    pub cpu_s_total: f64,
    pub peak_rss_mb: f64,
    /// Lists the observer made (1 = its watch never expired).
    pub observer_lists: usize,
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    /// `[seconds since the first create, pods created by then]`.
    pub created: Vec<(f64, usize)>,
    /// `[seconds since the first create, pods Running by then]`.
    pub running: Vec<(f64, usize)>,
    /// `[seconds since the first delete, pods gone by then]`.
    pub gone: Vec<(f64, usize)>,
}

#[derive(Debug, Serialize)]
pub struct BurstReport {
    pub label: String,
    pub node: String,
    pub n: usize,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    pub created: usize,
    pub running: usize,
    pub all_running: bool,
    pub gone: usize,
    pub all_gone: bool,
    /// First create to last create answered.
    pub create_s: f64,
    /// First create to the last pod seen Running.
    pub to_all_running_s: f64,
    /// Pods Running per second over `to_all_running_s`.
    pub pods_per_s: f64,
    /// Create answered → first watch event with phase Running, per pod.
    pub create_to_running: Percentiles,
    /// First delete sent → last pod gone.
    pub delete_to_gone_s: f64,
    /// Delete answered → DELETED watch event, per pod.
    pub delete_to_gone: Percentiles,
    /// Successful writes per pod by verb and resource, per API server (all clients).
    pub api_writes_per_pod: BTreeMap<String, WriteCounts>,
    /// The same less the generator's own creates and deletes: what the kubelet (and, on a
    /// backend, its controllers) wrote, per pod, with its total.
    pub kubelet_writes_per_pod: BTreeMap<String, WriteCounts>,
    pub processes: BTreeMap<String, ProcessReport>,
    pub generator: Generator,
    pub timeline: Timeline,
    /// The fault injected mid-burst, if any.
    pub fault: Option<FaultReport>,
}

fn per_pod(counts: &WriteCounts, n: usize) -> WriteCounts {
    let mut out: WriteCounts = counts
        .iter()
        .map(|(k, v)| (k.clone(), round2(v / n.max(1) as f64)))
        .collect();
    let total: f64 = counts.values().sum();
    out.insert("total".into(), round2(total / n.max(1) as f64));
    out
}

fn since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64()
}

pub async fn run(client: kube::Client, spec: BurstSpec) -> anyhow::Result<BurstReport> {
    let BurstSpec {
        label,
        namespace,
        node,
        n,
        concurrency,
        timeout,
        settle,
        pids,
        metrics,
        fault,
    } = spec;
    ensure_namespace(&client, &namespace).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let observer = Observer::start(client.clone(), &namespace, n).await?;
    let samplers: Vec<(String, Sampler)> = pids
        .iter()
        .map(|(role, pid)| (role.clone(), Sampler::start(*pid)))
        .collect();
    let read_all = || -> Vec<procstat::Reading> {
        samplers
            .iter()
            .map(|(_, s)| s.read().unwrap_or_default())
            .collect()
    };
    let writes_before = scrape_all(&metrics, "before the run").await?;
    let loadavg_start = procstat::loadavg();
    let idle = read_all();
    let gen0 = procstat::read(None).unwrap_or_default();
    let t0 = Instant::now();

    let answered = Arc::new(AtomicUsize::new(0));
    let fault_task = fault.map(|f| tokio::spawn(inject(f, answered.clone(), t0, metrics.clone())));
    let creates = create_pods(&api, &node, 0..n, concurrency, &answered).await?;
    let t_created = Instant::now();
    let fault = match fault_task {
        Some(task) => Some(task.await.context("fault task")??),
        None => None,
    };
    let gen_created = procstat::read(None).unwrap_or_default();
    let created: Vec<&RequestOutcome> = creates.iter().filter(|c| c.ok).collect();
    let created_count = created.len();

    let all_running = observer.wait(timeout, |s| s.running >= created_count).await;
    let t_running = observer
        .state
        .lock()
        .running_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(t_created);
    let at_running = read_all();

    for (_, s) in &samplers {
        s.collect_window(true);
    }
    tokio::time::sleep(settle).await;
    for (_, s) in &samplers {
        s.collect_window(false);
    }

    let t_del0 = Instant::now();
    let at_delete = read_all();
    let deletes = delete_pods(
        &api,
        created.iter().map(|c| c.index),
        &DeleteParams::default(),
        concurrency,
    )
    .await;
    let all_gone = observer.wait(timeout, |s| s.gone >= created_count).await;
    let t_gone = Instant::now();
    let at_gone = read_all();
    let gen_end = procstat::read(None).unwrap_or_default();
    let loadavg_end = procstat::loadavg();
    // Writes already sent are counted by the time the answer came; the observer saw the last
    // pod go after the kubelet's final delete was answered.
    let mut api_writes_per_pod = BTreeMap::new();
    let mut kubelet_writes_per_pod = BTreeMap::new();
    let mut counters_reset = Vec::new();
    let writes_after = scrape_all(&metrics, "after the run").await?;
    for (k, (((name, _), before), after)) in metrics
        .iter()
        .zip(&writes_before)
        .zip(&writes_after)
        .enumerate()
    {
        let mut delta = apimetrics::delta(before, after);
        if let Some((_, at_fault, after_fault)) = &fault {
            let total = |c: &WriteCounts| c.values().sum::<f64>();
            if total(&after_fault[k]) < total(&at_fault[k]) {
                // Restarted: its counters began again from zero.
                delta = apimetrics::delta(before, &at_fault[k]);
                for (key, v) in apimetrics::delta(&after_fault[k], after) {
                    *delta.entry(key).or_default() += v;
                }
                counters_reset.push(name.clone());
            }
        }
        api_writes_per_pod.insert(name.clone(), per_pod(&delta, n));
        let mut kubelet = delta.clone();
        if k == 0 {
            let own_deletes = deletes.iter().filter(|d| d.ok).count() as f64;
            for (key, own) in [
                ("POST pods", created_count as f64),
                ("DELETE pods", own_deletes),
            ] {
                if let Some(v) = kubelet.get_mut(key) {
                    *v = (*v - own).max(0.0);
                }
            }
            kubelet.retain(|_, v| *v > 0.0);
        }
        kubelet_writes_per_pod.insert(name.clone(), per_pod(&kubelet, n));
    }

    let fault_report = fault.map(|(mut report, _, _)| {
        report.counters_reset = counters_reset;
        report
    });
    let observed = observer.state.lock();
    let to_running: Vec<f64> = created
        .iter()
        .filter_map(|c| {
            observed.running_at[c.index].map(|t| t.saturating_duration_since(c.done).as_secs_f64())
        })
        .collect();
    let to_gone: Vec<f64> = deletes
        .iter()
        .filter_map(|d| {
            observed.gone_at[d.index].map(|t| t.saturating_duration_since(d.done).as_secs_f64())
        })
        .collect();
    let last_gone = observed
        .gone_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(t_gone);
    let burst_s = since(t0, t_running).max(1e-3);
    let processes = samplers
        .iter()
        .enumerate()
        .map(|(k, (role, s))| {
            let cpu_burst = at_running[k].cpu_seconds - idle[k].cpu_seconds;
            let report = ProcessReport {
                pid: s.pid,
                idle_rss_mb: mb(idle[k].rss_bytes),
                peak_rss_mb: mb(s.peak_rss()),
                steady_rss_mb: mb(s.window_median()),
                cpu_s_burst: round2(cpu_burst),
                cpu_s_delete: round2(at_gone[k].cpu_seconds - at_delete[k].cpu_seconds),
                cpu_s_total: round2(at_gone[k].cpu_seconds - idle[k].cpu_seconds),
                cores_burst: round2(cpu_burst / burst_s),
            };
            (role.clone(), report)
        })
        .collect();
    let create_s = since(t0, t_created).max(1e-3);
    let gen_cpu_create = gen_created.cpu_seconds - gen0.cpu_seconds;
    let generator = Generator {
        concurrency,
        create_rate_per_s: round2(created_count as f64 / create_s),
        create_request: Percentiles::of_seconds(creates.iter().map(|c| c.seconds).collect()),
        create_retries: creates.iter().map(|c| u64::from(c.retries)).sum(),
        create_failures: creates.len() - created_count,
        delete_request: Percentiles::of_seconds(deletes.iter().map(|d| d.seconds).collect()),
        delete_failures: deletes.iter().filter(|d| !d.ok).count(),
        cpu_s_create: round2(gen_cpu_create),
        cores_create: round2(gen_cpu_create / create_s),
        cpu_s_total: round2(gen_end.cpu_seconds - gen0.cpu_seconds),
        peak_rss_mb: mb(gen_end.rss_bytes.max(gen_created.rss_bytes)),
        observer_lists: observed.lists,
    };
    let timeline = Timeline {
        created: cumulative(
            created.iter().map(|c| since(t0, c.done)).collect(),
            TIMELINE_POINTS,
        ),
        running: cumulative(
            observed
                .running_at
                .iter()
                .flatten()
                .map(|&t| since(t0, t))
                .collect(),
            TIMELINE_POINTS,
        ),
        gone: cumulative(
            observed
                .gone_at
                .iter()
                .flatten()
                .map(|&t| since(t_del0, t))
                .collect(),
            TIMELINE_POINTS,
        ),
    };
    Ok(BurstReport {
        label,
        node,
        n,
        loadavg_start,
        loadavg_end,
        created: created_count,
        running: observed.running,
        all_running,
        gone: observed.gone,
        all_gone,
        create_s: round2(create_s),
        to_all_running_s: round2(burst_s),
        pods_per_s: round2(observed.running as f64 / burst_s),
        create_to_running: Percentiles::of_seconds(to_running),
        delete_to_gone_s: round2(since(t_del0, last_gone)),
        delete_to_gone: Percentiles::of_seconds(to_gone),
        api_writes_per_pod,
        kubelet_writes_per_pod,
        processes,
        generator,
        timeline,
        fault: fault_report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_map_back_to_their_index() {
        assert_eq!(pod_index(&pod_name(42), 100), Some(42));
        assert_eq!(pod_index(&pod_name(99_999), 100_000), Some(99_999));
        assert_eq!(pod_index(&pod_name(100), 100), None, "out of this run");
        assert_eq!(pod_index("web-1", 100), None);
    }

    #[test]
    fn a_relist_counts_pods_missing_from_it_as_gone_once() {
        let t = Instant::now();
        let pod = pod_manifest("p000000", "n").expect("pod");
        let mut s = Observed::new(3);
        s.listed = Some(vec![false; 3]);
        s.list_done(t);
        for i in 0..3 {
            s.apply(i, &pod, t);
        }
        s.delete(0, t);
        // The watch expires; the re-list no longer has pod 1.
        s.listed = Some(vec![false; 3]);
        s.apply(2, &pod, t);
        s.list_done(t);
        assert_eq!(s.gone, 2);
        assert!(s.gone_at[1].is_some() && s.gone_at[2].is_none());
        assert_eq!(s.lists, 2);
        // A late event for a gone pod does not bring it back.
        s.apply(0, &pod, t);
        s.delete(0, t);
        assert_eq!(s.gone, 2);
    }

    #[test]
    fn running_is_counted_once_per_pod() {
        let t = Instant::now();
        let mut pod = pod_manifest("p000000", "n").expect("pod");
        let mut s = Observed::new(1);
        s.apply(0, &pod, t);
        assert_eq!(s.running, 0);
        pod.status = Some(serde_json::from_value(json!({"phase": "Running"})).expect("status"));
        s.apply(0, &pod, t);
        s.apply(0, &pod, t);
        assert_eq!(s.running, 1);
    }
}
