//! Tests of the decision step: every transition docs/architecture.md describes, driven through
//! [`decide`] and [`after`] with builder-made pods and facts.

use super::*;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec};

fn pod_with_image(image: &str) -> Pod {
    Pod {
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn own_size_annotation_is_not_a_spec_change() {
    let a = pod_with_image("nginx:1");
    let mut b = a.clone();
    b.metadata.annotations = Some([(SIZE_ANNOTATION.to_string(), "0.5_1".to_string())].into());
    assert_eq!(spec_hash(&a), spec_hash(&b));
    b.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("team".into(), "a".into());
    assert_ne!(
        spec_hash(&a),
        spec_hash(&b),
        "other annotations still count"
    );
}

#[test]
fn spec_hash_follows_images_not_status() {
    let a = pod_with_image("nginx:1");
    let mut b = a.clone();
    b.status = Some(PodStatus {
        phase: Some("Running".into()),
        ..Default::default()
    });
    assert_eq!(spec_hash(&a), spec_hash(&b));
    assert_ne!(spec_hash(&a), spec_hash(&pod_with_image("nginx:2")));
}

#[test]
fn restart_count_is_the_max_over_containers() {
    let s = PodStatus {
        container_statuses: Some(vec![
            ContainerStatus {
                name: "a".into(),
                restart_count: 2,
                ..Default::default()
            },
            ContainerStatus {
                name: "b".into(),
                restart_count: 5,
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    assert_eq!(max_restart_count(Some(&s)), 5);
    assert_eq!(max_restart_count(None), 0);
}

#[test]
fn started_means_reported_by_a_kubelet() {
    let mut p = pod_with_image("x");
    assert!(!was_started(&p));
    p.status = Some(PodStatus {
        start_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        )),
        ..Default::default()
    });
    assert!(was_started(&p));
}
