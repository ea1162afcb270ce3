use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use parking_lot::Mutex;
use vk_provider_api::{PodKey, PodUpdate, Provider, ProviderError, ProviderSinks, ResolvedPod};

use super::*;

/// Builder for test pods.
struct PodBuilder {
    name: String,
    containers: Vec<(String, String)>,
    restart_policy: Option<String>,
    annotations: BTreeMap<String, String>,
}

fn pod(name: &str) -> PodBuilder {
    PodBuilder {
        name: name.into(),
        containers: vec![],
        restart_policy: None,
        annotations: BTreeMap::new(),
    }
}

impl PodBuilder {
    fn container(mut self, name: &str, image: &str) -> Self {
        self.containers.push((name.into(), image.into()));
        self
    }
    fn restart_policy(mut self, p: &str) -> Self {
        self.restart_policy = Some(p.into());
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    fn build(self) -> ResolvedPod {
        let uid = format!("uid-{}", self.name);
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some("ns".into()),
                uid: Some(uid.clone()),
                annotations: Some(self.annotations),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: self
                    .containers
                    .into_iter()
                    .map(|(n, i)| Container {
                        name: n,
                        image: Some(i),
                        ..Default::default()
                    })
                    .collect(),
                restart_policy: self.restart_policy,
                ..Default::default()
            }),
            status: None,
        };
        ResolvedPod::new(PodKey::new(uid, "ns", self.name), Arc::new(pod))
    }
}

type Seen = Arc<Mutex<Vec<(String, PodUpdate)>>>;

async fn started(cfg: SimConfig) -> (SimProvider, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let sim = SimProvider::new(cfg, "127.0.0.1".into()).unwrap();
    sim.start(ProviderSinks::new(
        move |uid, u| s2.lock().push((uid.to_string(), u)),
        || {},
    ))
    .await
    .unwrap();
    (sim, seen)
}

fn last_status(seen: &Seen, uid: &str) -> Option<PodStatus> {
    seen.lock().iter().rev().find_map(|(u, up)| match up {
        PodUpdate::Status(s) if u == uid => Some((**s).clone()),
        _ => None,
    })
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sim-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(start_paused = true)]
async fn create_pushes_a_kubelet_like_running_status() {
    let (sim, seen) = started(SimConfig::default()).await;
    sim.create_pod(&pod("a").container("c", "nginx").build())
        .await
        .unwrap();
    let s = last_status(&seen, "uid-a").unwrap();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
    assert!(s.start_time.is_some());
    let c = &s.container_statuses.unwrap()[0];
    assert!(c.ready && c.state.as_ref().unwrap().running.is_some());
    assert_eq!(c.image, "nginx");
    let conds: Vec<_> = s
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(conds.contains(&("Ready".into(), "True".into())));
    assert_eq!(sim.created_total(), 1);
}

#[tokio::test(start_paused = true)]
async fn start_latency_reports_pending_then_running() {
    let cfg = SimConfig {
        start_latency: Latency::Fixed(Duration::from_secs(2)),
        ..Default::default()
    };
    let (sim, seen) = started(cfg).await;
    sim.create_pod(&pod("a").container("c", "x").build())
        .await
        .unwrap();
    let s = last_status(&seen, "uid-a").unwrap();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    let waiting = s.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        last_status(&seen, "uid-a").unwrap().phase.as_deref(),
        Some("Running")
    );
}

#[tokio::test(start_paused = true)]
async fn lifetime_ends_pods_per_restart_policy() {
    let (sim, seen) = started(SimConfig::default()).await;
    sim.create_pod(
        &pod("ok")
            .container("c", "x")
            .restart_policy("Never")
            .annotation(LIFETIME_ANNOTATION, "1s")
            .build(),
    )
    .await
    .unwrap();
    sim.create_pod(
        &pod("bad")
            .container("c", "x")
            .restart_policy("Never")
            .annotation(LIFETIME_ANNOTATION, "1s")
            .annotation(EXIT_CODE_ANNOTATION, "3")
            .build(),
    )
    .await
    .unwrap();
    sim.create_pod(
        &pod("loop")
            .container("c", "x")
            .annotation(LIFETIME_ANNOTATION, "1s")
            .build(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        last_status(&seen, "uid-ok").unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let bad = last_status(&seen, "uid-bad").unwrap();
    assert_eq!(bad.phase.as_deref(), Some("Failed"));
    let term = bad.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((term.exit_code, term.reason.as_deref()), (3, Some("Error")));
    let lp = last_status(&seen, "uid-loop").unwrap();
    assert_eq!(lp.phase.as_deref(), Some("Running"));
    let c = &lp.container_statuses.unwrap()[0];
    assert_eq!(c.restart_count, 1);
    assert_eq!(
        c.last_state
            .clone()
            .unwrap()
            .terminated
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        last_status(&seen, "uid-loop")
            .unwrap()
            .container_statuses
            .unwrap()[0]
            .restart_count,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn failures_sold_out_capacity_and_bad_pods() {
    let (sim, _) = started(SimConfig {
        failure_rate: 1.0,
        ..Default::default()
    })
    .await;
    assert!(matches!(
        sim.create_pod(&pod("a").container("c", "x").build()).await,
        Err(ProviderError::Transient { .. })
    ));

    let (sim, _) = started(SimConfig {
        sold_out: true,
        ..Default::default()
    })
    .await;
    assert!(matches!(
        sim.create_pod(&pod("a").container("c", "x").build()).await,
        Err(ProviderError::SoldOut(_))
    ));
    let res = sim.node_resources().await.unwrap();
    assert!(!res.accepting_pods && res.message.is_some());

    let cfg = SimConfig::from_json_str(r#"{"capacity":{"pods":"1"}}"#).unwrap();
    let (sim, _) = started(cfg).await;
    sim.create_pod(&pod("a").container("c", "x").build())
        .await
        .unwrap();
    let err = sim
        .create_pod(&pod("b").container("c", "x").build())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("capacity of 1 pods"), "{err}");

    let err = sim.create_pod(&pod("empty").build()).await.unwrap_err();
    assert!(matches!(err, ProviderError::InvalidInput(_)));
    let err = sim
        .create_pod(&pod("noimg").container("c", "").build())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"c\""), "{err}");
    let err = sim
        .create_pod(
            &pod("ann")
                .container("c", "x")
                .annotation(LIFETIME_ANNOTATION, "soon")
                .build(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::InvalidInput(_)));
}

#[tokio::test(start_paused = true)]
async fn create_is_idempotent_per_uid() {
    let (sim, _) = started(SimConfig::default()).await;
    let p = pod("a").container("c", "x").build();
    sim.create_pod(&p).await.unwrap();
    sim.create_pod(&p).await.unwrap();
    assert_eq!(sim.created_total(), 1);
    assert_eq!(sim.pod_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn delete_reports_gone_after_stop_latency_bounded_by_grace() {
    let cfg = SimConfig {
        stop_latency: Latency::Fixed(Duration::from_secs(10)),
        ..Default::default()
    };
    let (sim, seen) = started(cfg).await;
    let p = pod("a").container("c", "x").build();
    sim.create_pod(&p).await.unwrap();
    sim.delete_pod(&p.key, Duration::from_secs(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(sim.pod_count(), 1, "still stopping");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.pod_count(), 0);
    assert!(
        seen.lock()
            .iter()
            .any(|(u, up)| u == "uid-a" && *up == PodUpdate::Gone)
    );
    // Unknown pods delete fine.
    sim.delete_pod(&PodKey::new("nope", "ns", "nope"), Duration::ZERO)
        .await
        .unwrap();
    // A forced delete (grace 0) of a stopping pod removes it at once.
    let q = pod("b").container("c", "x").build();
    sim.create_pod(&q).await.unwrap();
    sim.delete_pod(&q.key, Duration::from_secs(30))
        .await
        .unwrap();
    sim.delete_pod(&q.key, Duration::ZERO).await.unwrap();
    assert_eq!(sim.pod_count(), 0);
}

#[tokio::test]
async fn control_file_flips_failures_at_runtime() {
    let dir = tmpdir("control");
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.json");
    let changed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c2 = changed.clone();
    let sim = SimProvider::new(
        SimConfig {
            control_file: Some(control.clone()),
            ..Default::default()
        },
        "127.0.0.1".into(),
    )
    .unwrap();
    sim.start(ProviderSinks::new(
        |_, _| {},
        move || {
            c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        },
    ))
    .await
    .unwrap();
    sim.create_pod(&pod("a").container("c", "x").build())
        .await
        .unwrap();
    std::fs::write(&control, r#"{"failCreates": true, "soldOut": true}"#).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sim.create_pod(&pod("b").container("c", "x").build())
            .await
            .is_err()
    );
    assert!(!sim.node_resources().await.unwrap().accepting_pods);
    assert!(
        changed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "node change pushed"
    );
    std::fs::remove_file(&control).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.create_pod(&pod("b").container("c", "x").build())
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn state_dir_survives_a_restart_without_duplicate_creates() {
    let dir = tmpdir("state");
    let cfg = SimConfig {
        state_dir: Some(dir.clone()),
        ..Default::default()
    };
    let a = pod("a").container("c", "x").build();
    let b = pod("b").container("c", "x").build();
    {
        let (sim, _) = started(cfg.clone()).await;
        sim.create_pod(&a).await.unwrap();
        sim.create_pod(&b).await.unwrap();
        sim.delete_pod(&b.key, Duration::ZERO).await.unwrap();
    }
    let (sim, seen) = started(cfg.clone()).await;
    let listed = sim.list_pods().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|p| p.key.uid.as_str())
            .collect::<Vec<_>>(),
        vec!["uid-a"]
    );
    assert_eq!(
        listed[0].status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Running")
    );
    assert!(
        last_status(&seen, "uid-a").is_some(),
        "replayed pods are reported at start"
    );
    sim.create_pod(&a).await.unwrap();
    assert_eq!(state::creates(&dir).unwrap(), vec!["uid-a", "uid-b"]);
    assert_eq!(sim.cleanup_all().await.unwrap(), 1);
    drop(sim);
    let (sim, _) = started(cfg).await;
    assert_eq!(sim.pod_count(), 0, "cleanup is persisted");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_beyond_grace_outlasts_the_grace_period_and_a_forced_delete() {
    let cfg = SimConfig {
        stop_latency: Latency::Fixed(Duration::from_secs(10)),
        stop_beyond_grace: true,
        ..Default::default()
    };
    let (sim, _) = started(cfg).await;
    let p = pod("a").container("c", "x").build();
    sim.create_pod(&p).await.unwrap();
    sim.delete_pod(&p.key, Duration::from_secs(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sim.pod_count(), 1, "still stopping after the grace period");
    sim.delete_pod(&p.key, Duration::ZERO).await.unwrap();
    assert_eq!(sim.pod_count(), 1, "a forced delete does not hurry it");
    tokio::time::sleep(Duration::from_millis(7100)).await;
    assert_eq!(sim.pod_count(), 0, "gone once its own stop latency ran out");
}

#[tokio::test]
async fn injected_failures_are_logged_per_pod() {
    let dir = tmpdir("faults");
    let cfg = SimConfig {
        state_dir: Some(dir.clone()),
        failure_rate: 1.0,
        delete_failure_rate: 1.0,
        ..Default::default()
    };
    let (sim, _) = started(cfg).await;
    let a = pod("a").container("c", "x").build();
    assert!(matches!(
        sim.create_pod(&a).await,
        Err(ProviderError::Transient { .. })
    ));
    assert!(matches!(
        sim.delete_pod(&a.key, Duration::ZERO).await,
        Err(ProviderError::Transient { .. })
    ));
    let faults: Vec<(String, String, String)> = state::faults(&dir)
        .unwrap()
        .into_iter()
        .map(|f| (f.op, f.kind, f.uid))
        .collect();
    assert_eq!(
        faults,
        vec![
            ("create".into(), "failureRate".into(), "uid-a".into()),
            ("delete".into(), "deleteFailureRate".into(), "uid-a".into()),
        ]
    );
    assert!(
        state::creates(&dir).unwrap().is_empty(),
        "nothing was created"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
