//! A container's sandbox as bubblewrap arguments: a private mount, PID, IPC and UTS namespace
//! (the network is the host's) whose root is the host's filesystem or a configured image
//! directory, read-only, with the pod's volumes bind-mounted at their mountPaths.
//!
//! The root is read-only, so bubblewrap cannot create a mount point that does not exist there
//! (for example the service-account token's `/var/run/secrets/kubernetes.io/serviceaccount`).
//! For such a path the deepest existing directory on the way is rebuilt as a tmpfs holding
//! read-only binds of everything the original had, so the new mount point can be created
//! without touching the host. Destinations are resolved through symlinks inside the root first,
//! as container runtimes do (bubblewrap would otherwise follow an absolute symlink on the host).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Container;
use serde::{Deserialize, Serialize};

use crate::volumes::{PreparedVolume, VolumeKind};

/// The PATH a container gets when neither the pod nor an image config sets one (the CRI default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RootFs {
    /// The host's root filesystem, read-only.
    Host,
    /// A configured image directory, read-only.
    Dir(PathBuf),
}

impl RootFs {
    fn host_path(&self, in_sandbox: &Path) -> PathBuf {
        let rel = in_sandbox.strip_prefix("/").unwrap_or(in_sandbox);
        if rel.as_os_str().is_empty() {
            return match self {
                RootFs::Host => PathBuf::from("/"),
                RootFs::Dir(root) => root.clone(),
            };
        }
        match self {
            RootFs::Host => Path::new("/").join(rel),
            RootFs::Dir(root) => root.join(rel),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub dest: String,
    pub read_only: bool,
}

/// Who the command runs as (`runAsUser`/`runAsGroup`/`supplementalGroups`), via `setpriv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    pub root: RootFs,
    pub mounts: Vec<Mount>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub argv: Vec<String>,
    pub user: Option<User>,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("volumeMount {name:?}: the pod has no volume of that name")]
    NoSuchVolume { name: String },
    #[error("volumeMount {name:?}: {reason}")]
    InvalidMount { name: String, reason: String },
    #[error("mount path {dest:?}: {reason}")]
    Unresolvable { dest: String, reason: String },
    #[error("the container has no command")]
    NoCommand,
}

/// The bind mounts for one container's `volumeMounts`.
pub fn mounts_for_container(
    c: &Container,
    prepared: &[PreparedVolume],
) -> Result<Vec<Mount>, SandboxError> {
    let mut out = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let volume = prepared.iter().find(|p| p.name == vm.name).ok_or_else(|| {
            SandboxError::NoSuchVolume {
                name: vm.name.clone(),
            }
        })?;
        let invalid = |reason: &str| SandboxError::InvalidMount {
            name: vm.name.clone(),
            reason: reason.into(),
        };
        if !vm.mount_path.starts_with('/') {
            return Err(invalid("mountPath must be absolute"));
        }
        let sub_path = vm
            .sub_path
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(vm.sub_path_expr.as_deref().filter(|s| !s.is_empty()));
        if vm
            .sub_path_expr
            .as_deref()
            .is_some_and(|s| s.contains("$("))
        {
            return Err(invalid(
                "subPathExpr with variable references is not supported by the process provider",
            ));
        }
        let source = match sub_path {
            None => volume.host_path.clone(),
            Some(sub) => {
                let rel = Path::new(sub);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
                {
                    return Err(invalid("subPath must be a relative path without '..'"));
                }
                match volume.kind {
                    VolumeKind::EmptyDir => {
                        // Like the kubelet: a missing subPath of a writable volume is created.
                        let path = volume.host_path.join(rel);
                        if !path.exists() {
                            std::fs::create_dir_all(&path)
                                .map_err(|e| invalid(&format!("creating subPath: {e}")))?;
                        }
                        path
                    }
                    VolumeKind::Files => {
                        // A subPath of a file volume pins the current content (the kubelet's
                        // behaviour): bind the real file, not the `..data` link.
                        let path = volume.host_path.join(rel);
                        std::fs::canonicalize(&path).map_err(|_| {
                            invalid(&format!("subPath {sub:?} does not exist in the volume"))
                        })?
                    }
                }
            }
        };
        out.push(Mount {
            source,
            dest: vm.mount_path.clone(),
            read_only: vm.read_only.unwrap_or(false) || volume.kind == VolumeKind::Files,
        });
    }
    Ok(out)
}

/// bubblewrap's arguments (after the binary) for `spec`, ending with `--` and the command.
///
/// The environment is not among them: command lines are world-readable in `/proc`, and env
/// values can come from Secrets. The shim passes [`SandboxSpec::environment`] to bubblewrap as
/// its own environment, which bubblewrap hands on to the command.
pub fn bwrap_args(spec: &SandboxSpec) -> Result<Vec<OsString>, SandboxError> {
    if spec.argv.is_empty() {
        return Err(SandboxError::NoCommand);
    }
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
        args.extend(items.iter().map(|i| i.as_ref().to_os_string()));
    };
    push(&[
        &"--unshare-pid",
        &"--unshare-ipc",
        &"--unshare-uts",
        &"--unshare-cgroup-try",
        &"--hostname",
        &spec.hostname,
    ]);

    // Where new mount points can be created without help: bubblewrap's own tmpfs mounts and
    // writable volumes.
    let mut writable: Vec<PathBuf> = vec!["/tmp".into(), "/dev".into()];
    let mut resolved_mounts = Vec::with_capacity(spec.mounts.len());
    let mut synthetic: BTreeSet<PathBuf> = BTreeSet::new();
    let mut mounts: Vec<&Mount> = spec.mounts.iter().collect();
    mounts.sort_by_key(|m| Path::new(&m.dest).components().count());
    for m in mounts {
        let r =
            resolve_in_root(&spec.root, &m.dest).map_err(|reason| SandboxError::Unresolvable {
                dest: m.dest.clone(),
                reason,
            })?;
        if !r.exists && !writable.iter().any(|w| r.path.starts_with(w)) {
            synthetic.insert(r.existing.clone());
        }
        if !m.read_only {
            writable.push(r.path.clone());
        }
        let missing_parents = if r.exists {
            Vec::new()
        } else {
            missing_ancestors(&r)
        };
        resolved_mounts.push((m, r.path, missing_parents));
    }

    // A new top-level directory: the root is bubblewrap's own tmpfs, filled entry by entry below.
    if !synthetic.contains(Path::new("/")) {
        let root = spec.root.host_path(Path::new("/"));
        push(&[&"--ro-bind", &root, &"/"]);
    }
    for dir in &synthetic {
        if dir != Path::new("/") {
            push(&[&"--tmpfs", dir]);
        }
        let host_dir = spec.root.host_path(dir);
        let Ok(entries) = std::fs::read_dir(&host_dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let inside = dir.join(&name);
            if dir == Path::new("/") && ["proc", "dev", "tmp"].iter().any(|s| name == *s) {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_symlink() => {
                    if let Ok(target) = std::fs::read_link(entry.path()) {
                        push(&[&"--symlink", &target, &inside]);
                    }
                }
                Ok(_) => push(&[&"--ro-bind-try", &entry.path(), &inside]),
                Err(_) => {}
            }
        }
    }
    push(&[&"--proc", &"/proc", &"--dev", &"/dev", &"--tmpfs", &"/tmp"]);
    // bubblewrap makes a bind's missing parents mode 0700, which a non-root user cannot pass
    // through (to /var/run/secrets/kubernetes.io/serviceaccount, say): make them first with
    // `--dir`, 0755, as a kubelet's runtime does.
    let mut made: BTreeSet<&Path> = BTreeSet::new();
    for (m, dest, missing_parents) in &resolved_mounts {
        for dir in missing_parents {
            if made.insert(dir.as_path()) {
                push(&[&"--dir", dir]);
            }
        }
        let flag = if m.read_only { "--ro-bind" } else { "--bind" };
        push(&[&flag, &m.source, dest]);
    }

    let cwd = spec.cwd.as_deref().unwrap_or("/");
    push(&[&"--chdir", &cwd, &"--"]);
    if let Some(user) = &spec.user {
        args.extend(setpriv_prefix(user));
    }
    args.extend(spec.argv.iter().map(OsString::from));
    Ok(args)
}

impl SandboxSpec {
    /// The command's full environment: the container's variables, and PATH when it sets none.
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::with_capacity(self.env.len() + 1);
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".to_string(), DEFAULT_PATH.to_string()));
        }
        env.extend(self.env.iter().cloned());
        env
    }
}

/// `setpriv` arguments that drop to `user` before running the command.
pub fn setpriv_prefix(user: &User) -> Vec<OsString> {
    let groups = if user.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            user.groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    vec![
        "setpriv".into(),
        format!("--reuid={}", user.uid).into(),
        format!("--regid={}", user.gid).into(),
        groups.into(),
        "--".into(),
    ]
}

/// A destination resolved inside the root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resolved {
    /// The path with every symlink that exists inside the root followed.
    path: PathBuf,
    /// Whether it exists.
    exists: bool,
    /// Its deepest existing ancestor directory (the path itself when it exists).
    existing: PathBuf,
}

/// Resolve `dest` as the kernel would inside the sandbox's root (symlinks are relative to it).
fn resolve_in_root(root: &RootFs, dest: &str) -> Result<Resolved, String> {
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, Path::new(dest))?;
    let mut current = PathBuf::from("/");
    let mut links = 0;
    while let Some(next) = pending.pop() {
        if next == ".." {
            current.pop();
            continue;
        }
        let candidate = current.join(&next);
        let host = root.host_path(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err("too many levels of symbolic links".into());
                }
                let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
                if target.is_absolute() {
                    current = PathBuf::from("/");
                }
                push_components(&mut pending, &target)?;
            }
            Ok(_) => current = candidate,
            Err(_) => {
                let existing = current.clone();
                let mut path = candidate;
                while let Some(rest) = pending.pop() {
                    if rest == ".." {
                        return Err("'..' after a missing directory".into());
                    }
                    path.push(rest);
                }
                return Ok(Resolved {
                    path,
                    exists: false,
                    existing,
                });
            }
        }
    }
    Ok(Resolved {
        existing: current.clone(),
        path: current,
        exists: true,
    })
}

/// The directories between a missing destination's deepest existing ancestor and the
/// destination itself (both left out), outermost first; not bubblewrap's own /proc, /dev and
/// /tmp, which it mounts before any bind.
fn missing_ancestors(r: &Resolved) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = r
        .path
        .ancestors()
        .skip(1)
        .take_while(|a| *a != r.existing.as_path() && a.starts_with(&r.existing))
        .filter(|a| {
            !["/proc", "/dev", "/tmp"]
                .iter()
                .any(|own| *a == Path::new(own))
        })
        .map(Path::to_path_buf)
        .collect();
    dirs.reverse();
    dirs
}

/// Push `path`'s components onto a stack so that popping yields them in order.
fn push_components(stack: &mut Vec<OsString>, path: &Path) -> Result<(), String> {
    for c in path.components().rev() {
        match c {
            Component::Normal(n) => stack.push(n.to_os_string()),
            Component::ParentDir => stack.push("..".into()),
            Component::RootDir | Component::CurDir => {}
            Component::Prefix(_) => return Err("not a Unix path".into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vk-sandbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn image_root() -> PathBuf {
        let root = temp("root");
        std::fs::create_dir_all(root.join("run/lock")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../etc", root.join("run/etc-rel")).unwrap();
        root
    }

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let root = image_root();
        let fs = RootFs::Dir(root.clone());
        let r = resolve_in_root(&fs, "/var/run/secrets/sa").unwrap();
        assert_eq!(r.path, PathBuf::from("/run/secrets/sa"));
        assert!(!r.exists);
        assert_eq!(r.existing, PathBuf::from("/run"));
        let r = resolve_in_root(&fs, "/run/etc-rel").unwrap();
        assert_eq!(r.path, PathBuf::from("/etc"));
        assert!(r.exists);
        let r = resolve_in_root(&fs, "/data").unwrap();
        assert_eq!(r.existing, PathBuf::from("/"));
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(&fs, "/loop/x").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn spec(root: RootFs, mounts: Vec<Mount>) -> SandboxSpec {
        SandboxSpec {
            root,
            mounts,
            env: vec![("A".into(), "b c".into())],
            cwd: None,
            argv: vec!["sleep".into(), "1".into()],
            user: None,
            hostname: "web-0".into(),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn has_seq(args: &[String], seq: &[&str]) -> bool {
        args.windows(seq.len()).any(|w| w == seq)
    }

    #[test]
    fn missing_mount_points_get_a_synthetic_parent() {
        let root = image_root();
        let m = |dest: &str, ro| Mount {
            source: "/src".into(),
            dest: dest.into(),
            read_only: ro,
        };
        let args = strings(
            &bwrap_args(&spec(
                RootFs::Dir(root.clone()),
                vec![
                    m("/var/run/secrets/kubernetes.io/serviceaccount", true),
                    m("/etc", true),
                    m("/tmp/x", false),
                ],
            ))
            .unwrap(),
        );
        let root_s = root.to_string_lossy().into_owned();
        assert!(has_seq(&args, &["--ro-bind", &root_s, "/"]), "{args:?}");
        assert!(has_seq(&args, &["--tmpfs", "/run"]), "{args:?}");
        let lock = format!("{root_s}/run/lock");
        assert!(has_seq(&args, &["--ro-bind-try", &lock, "/run/lock"]));
        assert!(has_seq(&args, &["--symlink", "../etc", "/run/etc-rel"]));
        assert!(has_seq(
            &args,
            &[
                "--ro-bind",
                "/src",
                "/run/secrets/kubernetes.io/serviceaccount"
            ]
        ));
        // The new parents are made 0755 (`--dir`) before the bind, not left to bubblewrap,
        // whose own are 0700: a non-root user could not reach the token.
        let pos = |seq: &[&str]| args.windows(seq.len()).position(|w| w == seq);
        let secrets = pos(&["--dir", "/run/secrets"]).expect("--dir /run/secrets");
        let k8s = pos(&["--dir", "/run/secrets/kubernetes.io"]).expect("--dir kubernetes.io");
        let bind = pos(&[
            "--ro-bind",
            "/src",
            "/run/secrets/kubernetes.io/serviceaccount",
        ])
        .expect("bind");
        assert!(secrets < k8s && k8s < bind, "{args:?}");
        assert_eq!(args.iter().filter(|a| *a == "--dir").count(), 2, "{args:?}");
        // Existing paths and paths under /tmp need no help.
        assert!(!has_seq(&args, &["--tmpfs", "/"]));
        assert!(!has_seq(&args, &["--tmpfs", "/etc"]));
        assert!(has_seq(&args, &["--bind", "/src", "/tmp/x"]));
        assert!(
            !args.iter().any(|a| a == "b c"),
            "no env value on the command line"
        );
        assert!(has_seq(&args, &["--chdir", "/", "--", "sleep", "1"]));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_new_top_level_directory_rebuilds_the_root() {
        let root = image_root();
        let args = strings(
            &bwrap_args(&spec(
                RootFs::Dir(root.clone()),
                vec![Mount {
                    source: "/src".into(),
                    dest: "/config".into(),
                    read_only: true,
                }],
            ))
            .unwrap(),
        );
        let root_s = root.to_string_lossy().into_owned();
        assert!(!has_seq(&args, &["--ro-bind", &root_s, "/"]), "{args:?}");
        assert!(has_seq(
            &args,
            &["--ro-bind-try", &format!("{root_s}/etc"), "/etc"]
        ));
        assert!(
            has_seq(&args, &["--symlink", "/run", "/var/run"]) || args.iter().any(|a| a == "/var")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn user_is_dropped_with_setpriv() {
        let mut s = spec(RootFs::Host, vec![]);
        s.user = Some(User {
            uid: 1000,
            gid: 2000,
            groups: vec![3000],
        });
        let args = strings(&bwrap_args(&s).unwrap());
        assert!(has_seq(
            &args,
            &[
                "--",
                "setpriv",
                "--reuid=1000",
                "--regid=2000",
                "--groups=3000",
                "--",
                "sleep"
            ]
        ));
    }

    #[test]
    fn mounts_follow_volume_mounts() {
        let dir = temp("mounts");
        std::fs::create_dir_all(dir.join("cfg/..data")).unwrap();
        std::fs::write(dir.join("cfg/..data/key"), "v").unwrap();
        symlink("..data/key", dir.join("cfg/key")).unwrap();
        let prepared = vec![
            PreparedVolume {
                name: "cfg".into(),
                host_path: dir.join("cfg"),
                kind: VolumeKind::Files,
            },
            PreparedVolume {
                name: "scratch".into(),
                host_path: dir.join("scratch"),
                kind: VolumeKind::EmptyDir,
            },
        ];
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "cfg", "mountPath": "/etc/one", "subPath": "key"},
                {"name": "scratch", "mountPath": "/data", "subPath": "a/b"},
                {"name": "scratch", "mountPath": "/ro", "readOnly": true}
            ]
        }))
        .unwrap();
        let mounts = mounts_for_container(&c, &prepared).unwrap();
        assert!(mounts[0].read_only, "file volumes are read-only");
        assert_eq!(
            mounts[1].source,
            dir.join("cfg/..data/key").canonicalize().unwrap()
        );
        assert_eq!(mounts[2].source, dir.join("scratch/a/b"));
        assert!(dir.join("scratch/a/b").is_dir());
        assert!(!mounts[2].read_only);
        assert!(mounts[3].read_only);

        let bad = |vm: serde_json::Value| {
            let c: Container =
                serde_json::from_value(serde_json::json!({"name": "c", "volumeMounts": [vm]}))
                    .unwrap();
            mounts_for_container(&c, &prepared).unwrap_err().to_string()
        };
        assert_eq!(
            bad(serde_json::json!({"name": "nope", "mountPath": "/x"})),
            "volumeMount \"nope\": the pod has no volume of that name"
        );
        assert!(
            bad(serde_json::json!({"name": "scratch", "mountPath": "/x", "subPath": "../etc"}))
                .contains("'..'")
        );
        assert!(
            bad(serde_json::json!({"name": "cfg", "mountPath": "/x", "subPath": "missing"}))
                .contains("does not exist")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
