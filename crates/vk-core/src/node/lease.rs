//! The node's heartbeat: a `coordination.k8s.io/v1` Lease in `kube-node-lease`, named after the
//! node, owned by it (so it goes when the node goes), renewed every `renew_interval`.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use crate::error::api_status_code;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Create or renew the lease of `node` (whose object has `node_uid`).
pub async fn renew(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    duration_secs: i32,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node.to_string(),
        uid: node_uid.to_string(),
        ..Default::default()
    };
    for _ in 0..3 {
        match api.get_opt(node).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(node.to_string()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(node.to_string()),
                        lease_duration_seconds: Some(duration_secs),
                        renew_time: Some(now.clone()),
                        ..Default::default()
                    }),
                };
                match api.create(&PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(e) if api_status_code(&e) == Some(409) => continue,
                    Err(e) => return Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(node.to_string());
                spec.lease_duration_seconds = Some(duration_secs);
                spec.renew_time = Some(now.clone());
                // A lease left over from a deleted node object must follow the new one.
                lease.metadata.owner_references = Some(vec![owner.clone()]);
                match api.replace(node, &PostParams::default(), &lease).await {
                    Ok(_) => return Ok(()),
                    Err(e) if api_status_code(&e) == Some(409) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Err(kube::Error::Api(Box::new(
        kube::core::Status::failure("lease kept conflicting", "Conflict").with_code(409),
    )))
}
