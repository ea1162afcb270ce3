//! A pod's plan: everything needed to (re)start its containers, computed once at creation from
//! the resolved pod and persisted as `pod.json`, so a restarted vkubelet can restart a crashed
//! container of a pod it adopted without the resolution.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use vk_provider_api::resolution::{PodAddresses, Template};
use vk_provider_api::{PodKey, ResolvedPod};

use crate::config::ProcessConfig;
use crate::sandbox::{Mount, RootFs, SandboxSpec, User, bwrap_args, mounts_for_container};
use crate::volumes::PreparedVolume;

pub const PLAN_FILE: &str = "pod.json";
pub const TERMINATION_LOG: &str = "termination-log";
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
const DEFAULT_GRACE_SECONDS: i64 = 30;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    /// The container as the pod declared it (probes, hooks, ports, resources).
    pub spec: Container,
    /// The sandbox, kept for commands run inside it later (probes, hooks, exec).
    pub sandbox: SandboxSpec,
    /// The full command line of an instance: bubblewrap and its arguments, then the command.
    pub argv: Vec<String>,
}

impl ContainerPlan {
    /// Where this container's shim records, logs and termination message live.
    pub fn dir(&self, pod_dir: &Path) -> PathBuf {
        pod_dir.join("containers").join(&self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlan {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub restart_policy: String,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    pub restart_count_base: i32,
    pub created_at: Timestamp,
    pub pod_ip: String,
    pub termination_grace_seconds: i64,
    pub active_deadline_seconds: Option<i64>,
    /// Where the pod's volumes are (to rewrite them when their sources change).
    pub volumes: Vec<PreparedVolume>,
}

impl PodPlan {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.uid, &self.namespace, &self.name)
    }

    pub fn all_containers(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init_containers.iter().chain(&self.containers)
    }
}

/// Why a pod cannot run as local processes (the pod fails with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    /// A kubelet-style reason (`InvalidImageName`, `CreateContainerConfigError`).
    pub reason: &'static str,
    pub message: String,
}

impl PlanError {
    fn config(message: String) -> Self {
        Self {
            reason: "CreateContainerConfigError",
            message,
        }
    }
}

/// Build the plan for a resolved pod whose volumes are prepared in `pod_dir`.
pub fn plan(
    cfg: &ProcessConfig,
    pod: &ResolvedPod,
    pod_dir: &Path,
    prepared: &[PreparedVolume],
    pod_ip: &str,
) -> Result<PodPlan, PlanError> {
    let spec = pod
        .pod
        .spec
        .as_ref()
        .ok_or_else(|| PlanError::config("the pod has no spec".into()))?;
    let addresses = PodAddresses {
        pod_ips: vec![pod_ip.to_string()],
        host_ips: vec![pod_ip.to_string()],
    };
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.key.name.clone());
    let etc_dir = pod_dir.join("etc");
    write_etc_files(&etc_dir, spec, &hostname, pod_ip)
        .map_err(|e| PlanError::config(format!("writing /etc/hosts: {e}")))?;

    let container_plan = |c: &Container| -> Result<ContainerPlan, PlanError> {
        let fail =
            |e: &dyn std::fmt::Display| PlanError::config(format!("container {:?}: {e}", c.name));
        let resolved = pod.resolution.container(&c.name);
        let image = c.image.clone().unwrap_or_default();
        let image_cfg = cfg.images.get(&image);
        let render = |list: Option<&Vec<Template>>, raw: &Option<Vec<String>>| match list {
            Some(l) => l.iter().map(|t| t.render(&addresses)).collect::<Vec<_>>(),
            None => raw.clone().unwrap_or_default(),
        };
        let command = render(resolved.and_then(|r| r.command.as_ref()), &c.command);
        let args = render(resolved.and_then(|r| r.args.as_ref()), &c.args);
        let mut argv = if command.is_empty() {
            match image_cfg {
                Some(ic) if !ic.command.is_empty() => ic.command.clone(),
                _ => {
                    return Err(PlanError {
                        reason: "InvalidImageName",
                        message: format!(
                            "container {:?}: image {image:?} is not configured for the process provider (images: in its config) and the container names no command; give it a command to run on the host filesystem",
                            c.name
                        ),
                    });
                }
            }
        } else {
            command
        };
        argv.extend(args);
        let mut env = resolved
            .map(|r| r.render_env(&addresses))
            .unwrap_or_default();
        if !env.iter().any(|(k, _)| k == "HOSTNAME") {
            env.push(("HOSTNAME".into(), hostname.clone()));
        }
        let mut mounts = mounts_for_container(c, prepared).map_err(|e| fail(&e))?;
        for (file, dest) in [("hosts", "/etc/hosts"), ("hostname", "/etc/hostname")] {
            if !mounts.iter().any(|m| m.dest == dest) {
                mounts.push(Mount {
                    source: etc_dir.join(file),
                    dest: dest.into(),
                    read_only: true,
                });
            }
        }
        let cdir = pod_dir.join("containers").join(&c.name);
        std::fs::create_dir_all(&cdir).map_err(|e| fail(&e))?;
        let message_file = cdir.join(TERMINATION_LOG);
        std::fs::write(&message_file, b"").map_err(|e| fail(&e))?;
        mounts.push(Mount {
            source: message_file,
            dest: c
                .termination_message_path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.into()),
            read_only: false,
        });
        let sandbox = SandboxSpec {
            root: match image_cfg {
                Some(ic) => RootFs::Dir(ic.root.clone()),
                None => RootFs::Host,
            },
            mounts,
            env,
            cwd: c.working_dir.clone().filter(|d| !d.is_empty()),
            argv,
            user: user_for(spec, c).map_err(|e| fail(&e))?,
            hostname: hostname.clone(),
        };
        let args = bwrap_args(&sandbox).map_err(|e| fail(&e))?;
        let mut full: Vec<OsString> = vec![
            cfg.bwrap.clone().into_os_string(),
            // The command is PID 1 of its sandbox and gets the termination signals itself; it
            // dies with its shim.
            "--as-pid-1".into(),
            "--die-with-parent".into(),
        ];
        // A new session keeps a command from reaching a terminal it was not given; a `tty`
        // container is given its own terminal (by its shim) and must keep it as controlling
        // terminal.
        if !c.tty.unwrap_or(false) {
            full.push("--new-session".into());
        }
        full.extend(args);
        let argv = full
            .into_iter()
            .map(|a| {
                a.into_string()
                    .map_err(|_| fail(&"an argument is not valid UTF-8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ContainerPlan {
            name: c.name.clone(),
            image,
            spec: c.clone(),
            sandbox,
            argv,
        })
    };
    let init_containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(container_plan)
        .collect::<Result<Vec<_>, _>>()?;
    let containers = spec
        .containers
        .iter()
        .map(container_plan)
        .collect::<Result<Vec<_>, _>>()?;
    if containers.is_empty() {
        return Err(PlanError::config("the pod has no containers".into()));
    }
    Ok(PodPlan {
        uid: pod.key.uid.clone(),
        namespace: pod.key.namespace.clone(),
        name: pod.key.name.clone(),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
        init_containers,
        containers,
        restart_count_base: pod.restart_count_base,
        created_at: Timestamp::now(),
        pod_ip: pod_ip.to_string(),
        termination_grace_seconds: spec
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_SECONDS)
            .max(0),
        active_deadline_seconds: spec.active_deadline_seconds.filter(|s| *s > 0),
        volumes: prepared.to_vec(),
    })
}

/// `runAsUser`/`runAsGroup`/`supplementalGroups`/`fsGroup`, container settings over the pod's.
fn user_for(spec: &PodSpec, c: &Container) -> Result<Option<User>, String> {
    let pod_sc = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && uid.unwrap_or(0) == 0 {
        return Err(
            "runAsNonRoot is set but the container would run as root (set runAsUser to a non-zero uid)"
                .into(),
        );
    }
    let mut groups: Vec<i64> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    groups.extend(pod_sc.and_then(|s| s.fs_group));
    if uid.is_none() && gid.is_none() && groups.is_empty() {
        return Ok(None);
    }
    let id =
        |v: i64, what: &str| u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"));
    let uid = id(uid.unwrap_or(0), "runAsUser")?;
    Ok(Some(User {
        uid,
        gid: id(gid.unwrap_or(i64::from(uid)), "runAsGroup")?,
        groups: groups
            .into_iter()
            .map(|g| id(g, "group"))
            .collect::<Result<_, _>>()?,
    }))
}

/// The pod's `/etc/hosts` (the kubelet's managed file: localhost, the pod's own name, and
/// `hostAliases`) and `/etc/hostname`.
fn write_etc_files(
    dir: &Path,
    spec: &PodSpec,
    hostname: &str,
    pod_ip: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut hosts = String::from(
        "# Kubernetes-managed hosts file (vkubelet process provider).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    let fqdn = spec
        .subdomain
        .as_ref()
        .map(|sub| format!("{hostname}.{sub}"));
    hosts.push_str(&format!(
        "{pod_ip}\t{}{hostname}\n",
        fqdn.map(|f| format!("{f}\t")).unwrap_or_default()
    ));
    for alias in spec.host_aliases.iter().flatten() {
        if let Some(names) = &alias.hostnames {
            let ip = &alias.ip;
            hosts.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
}

pub fn load(pod_dir: &Path) -> Option<PodPlan> {
    crate::shim::read_json(pod_dir, PLAN_FILE)
}
