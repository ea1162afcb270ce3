//! Test support for vkubelet.
//!
//! Integration tests run against the project's real control plane (`scripts/cluster.sh up DIR`,
//! started for you by `make test`). The kubeconfig comes from [`KUBECONFIG_ENV`]
//! (`VKUBELET_TEST_KUBECONFIG`). When it is unset or the API server does not answer, tests skip
//! locally but **fail** when `CI=true` (or `VKUBELET_TEST_REQUIRE_CLUSTER=1`).
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::Pod;
//! use std::time::Duration;
//!
//! # async fn example() {
//! let Some(env) = vk_testkit::env().await else { return };
//! let pod = vk_testkit::PodBuilder::new("p").command(["sleep", "3600"]).build();
//! env.create(&pod).await;
//! let pods = env.api::<Pod>();
//! vk_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(200), async || {
//!     match pods.get_opt("p").await {
//!         Ok(Some(p)) => Ok(p),
//!         other => Err(format!("{other:?}")),
//!     }
//! })
//! .await;
//! env.cleanup().await; // optional: dropping `env` deletes the namespace too
//! # }
//! ```
//!
//! A test that breaks the control plane (kills its API server) starts one of its own with
//! [`OwnControlPlane::start`] instead.

mod builders;
mod burst;
mod cluster;
mod control_plane;
mod error;
mod kubectl;
mod names;
mod service_account;
mod wait;

pub use builders::{DeploymentBuilder, PodBuilder};
pub use burst::{Burst, PodHistory, PodRecorder, event_reasons_by_uid};
pub use cluster::{
    KEEP_NAMESPACES_ENV, KUBECONFIG_ENV, REQUIRE_CLUSTER_ENV, TEST_LABEL, TEST_NAME_LABEL,
    TestCluster, TestEnv, cluster, cluster_required, env, env_named,
};
pub use control_plane::{OwnControlPlane, cluster_script};
pub use error::Error;
pub use kubectl::KubectlOutput;
pub use names::{current_test_name, is_dns_label, namespace_name};
pub use service_account::{MintError, apply_manifests, mint_token, service_account_kubeconfig};
pub use wait::{WaitTimeout, try_wait_for, wait_for};
