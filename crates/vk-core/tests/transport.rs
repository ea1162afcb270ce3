//! The API client's transport against the real API server: requests in flight share a few
//! HTTP/2 connections, while a watch holds a connection of its own (vk_core::transport).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashSet;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ListParams, WatchParams};
use vk_core::client::{ClientOptions, build_client};
use vk_core::metrics::Metrics;
use vk_core::transport::MULTIPLEXED_CONNECTIONS;

/// This process's established TCP connections to `port`, as socket inodes.
fn connections_to(port: u16) -> HashSet<u64> {
    let mine: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .expect("fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut found = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (cols.get(2), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let remote_port = remote
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 01: ESTABLISHED
            if remote_port == Some(port)
                && *state == "01"
                && let Ok(inode) = inode.parse::<u64>()
                && mine.contains(&inode)
            {
                found.insert(inode);
            }
        }
    }
    found
}

/// One list at a time for each multiplexed connection (so each is up before the burst), then
/// 64 at once; every one must succeed.
async fn lists_in_turn_then_at_once(namespaces: &Api<Namespace>) {
    let one = ListParams::default().limit(1);
    for _ in 0..MULTIPLEXED_CONNECTIONS {
        namespaces.list(&one).await.expect("first lists");
    }
    let lists = futures::future::join_all((0..64).map(|_| namespaces.list(&one))).await;
    for r in &lists {
        assert!(r.is_ok(), "a list failed: {r:?}");
    }
}

#[tokio::test]
async fn requests_in_flight_share_a_few_connections_and_a_watch_has_its_own() {
    let Some(cluster) = vk_testkit::cluster().await else {
        return;
    };
    let config = cluster.config().clone();
    let port = config.cluster_url.port_u16().expect("API server port");
    let before = connections_to(port);
    let client = build_client(config, ClientOptions::default(), Metrics::new()).expect("client");
    let namespaces: Api<Namespace> = Api::all(client);

    let mut watch = namespaces
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .expect("watch")
        .boxed();
    // The watch is answered (its first event) before the burst, so it has its connection.
    assert!(watch.next().await.is_some(), "the watch delivered nothing");
    lists_in_turn_then_at_once(&namespaces).await;
    let ours: HashSet<u64> = connections_to(port).difference(&before).copied().collect();
    // HTTP/1.1 alone needs one connection per request in flight (about 64 here).
    assert_eq!(
        ours.len(),
        MULTIPLEXED_CONNECTIONS + 1,
        "expected {MULTIPLEXED_CONNECTIONS} multiplexed connections and the watch's own, found {}",
        ours.len()
    );
}

/// The Lease client's setting: one connection carries every request, however many are in
/// flight.
#[tokio::test]
async fn a_one_connection_client_keeps_to_one() {
    let Some(cluster) = vk_testkit::cluster().await else {
        return;
    };
    let config = cluster.config().clone();
    let port = config.cluster_url.port_u16().expect("API server port");
    let before = connections_to(port);
    let options = ClientOptions {
        connections: 1,
        ..ClientOptions::default()
    };
    let client = build_client(config, options, Metrics::new()).expect("client");
    let namespaces: Api<Namespace> = Api::all(client);
    // A round robin over several connections would have opened one per list in turn.
    lists_in_turn_then_at_once(&namespaces).await;
    let ours: HashSet<u64> = connections_to(port).difference(&before).copied().collect();
    assert_eq!(ours.len(), 1, "connections: {}", ours.len());
}
