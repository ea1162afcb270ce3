//! A pod's volumes on the host: the files the core resolved (configMap, secret, downwardAPI,
//! projected, service-account tokens) written in the kubelet's atomic layout, and emptyDirs.
//!
//! File volumes are laid out as the kubelet's atomic writer does — the content in a timestamped
//! directory, `..data` a symlink to it, and each top-level entry a symlink through `..data` — so
//! an update is one `rename(2)` of `..data`: a process never sees a half-written volume, and
//! programs that watch `..data` for ConfigMap changes work unchanged.
//!
//! Volumes holding secret material, and `medium: Memory` emptyDirs, live under the provider's
//! `secretsDir` (meant to be a tmpfs) instead of the state directory, so they never reach disk.
//!
//! With the pod's `fsGroup`, volumes belong to that group as a kubelet makes them: files and
//! directories get the group, files are group-readable (a Secret's `defaultMode: 0440` is then
//! readable by the pod's non-root user) and emptyDirs are setgid. The volume directory's group
//! is the record of it, so a later content update keeps the ownership.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use vk_provider_api::resolution::{ResolvedVolume, ResolvedVolumeSource, VolumeFile};

const DATA_LINK: &str = "..data";
const EMPTY_DIR_MODE: u32 = 0o777;
/// What the kubelet adds to a read-only volume's files for the pod's fsGroup.
const FS_GROUP_FILE_BITS: u32 = 0o440;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeKind {
    /// Resolved content; always mounted read-only, as the kubelet does.
    Files,
    EmptyDir,
}

/// A volume ready to be bind-mounted into the pod's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreparedVolume {
    pub name: String,
    pub host_path: PathBuf,
    pub kind: VolumeKind,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {name:?}: {what} volumes are not supported by the process provider")]
    Unsupported { name: String, what: String },
    #[error("volume {name:?}: invalid name")]
    InvalidName { name: String },
    #[error("volume {name:?}: writing {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where one pod's volumes go.
#[derive(Debug, Clone)]
pub struct VolumeDirs {
    /// `<pod dir>/volumes`
    pub plain: PathBuf,
    /// `<secretsDir>/<pod uid>`
    pub secret: PathBuf,
}

impl VolumeDirs {
    fn dir_for(&self, v: &ResolvedVolume) -> PathBuf {
        let in_memory = match &v.source {
            ResolvedVolumeSource::Files { files, .. } => files.iter().any(|f| f.sensitive),
            ResolvedVolumeSource::EmptyDir { medium, .. } => medium.as_deref() == Some("Memory"),
            ResolvedVolumeSource::Passthrough(_) => false,
        };
        if in_memory {
            self.secret.join(&v.name)
        } else {
            self.plain.join(&v.name)
        }
    }
}

/// Create every volume of a new pod, owned by `fs_group` when the pod sets one. Fails on a
/// volume kind this provider cannot serve.
pub fn prepare_pod_volumes(
    dirs: &VolumeDirs,
    volumes: &[ResolvedVolume],
    fs_group: Option<u32>,
) -> Result<Vec<PreparedVolume>, VolumeError> {
    let mut prepared = Vec::with_capacity(volumes.len());
    for v in volumes {
        check_name(&v.name)?;
        let dir = dirs.dir_for(v);
        let io = |path: &Path, source| VolumeError::Io {
            name: v.name.clone(),
            path: path.to_path_buf(),
            source,
        };
        let kind = match &v.source {
            ResolvedVolumeSource::Files { files, .. } => {
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                if let Some(gid) = fs_group {
                    lchown(&dir, None, Some(gid)).map_err(|e| io(&dir, e))?;
                }
                write_files(&dir, files, fs_group).map_err(|e| io(&dir, e))?;
                VolumeKind::Files
            }
            ResolvedVolumeSource::EmptyDir { .. } => {
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                let mode = match fs_group {
                    Some(gid) => {
                        lchown(&dir, None, Some(gid)).map_err(|e| io(&dir, e))?;
                        // New files there belong to the group too.
                        EMPTY_DIR_MODE | 0o2000
                    }
                    None => EMPTY_DIR_MODE,
                };
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io(&dir, e))?;
                VolumeKind::EmptyDir
            }
            ResolvedVolumeSource::Passthrough(raw) => {
                return Err(VolumeError::Unsupported {
                    name: v.name.clone(),
                    what: passthrough_kind(raw),
                });
            }
        };
        prepared.push(PreparedVolume {
            name: v.name.clone(),
            host_path: dir,
            kind,
        });
    }
    Ok(prepared)
}

/// Rewrite the file volumes whose content changed. Returns the names of the volumes changed.
pub fn update_pod_volumes(
    dirs: &VolumeDirs,
    volumes: &[ResolvedVolume],
) -> Result<Vec<String>, VolumeError> {
    let mut changed = Vec::new();
    for v in volumes {
        let ResolvedVolumeSource::Files { files, .. } = &v.source else {
            continue;
        };
        check_name(&v.name)?;
        let dir = dirs.dir_for(v);
        let Some(meta) = std::fs::metadata(&dir).ok().filter(|m| m.is_dir()) else {
            // A volume the pod did not have at creation cannot appear in running containers.
            continue;
        };
        // The group given at creation: the pod's fsGroup (root's when it has none).
        let fs_group = Some(meta.gid()).filter(|g| *g != 0);
        let wrote = write_files(&dir, files, fs_group).map_err(|source| VolumeError::Io {
            name: v.name.clone(),
            path: dir.clone(),
            source,
        })?;
        if wrote {
            changed.push(v.name.clone());
        }
    }
    Ok(changed)
}

fn check_name(name: &str) -> Result<(), VolumeError> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(VolumeError::InvalidName { name: name.into() });
    }
    Ok(())
}

fn passthrough_kind(v: &k8s_openapi::api::core::v1::Volume) -> String {
    // The volume's source is its one set field besides `name`.
    serde_json::to_value(v)
        .ok()
        .and_then(|j| {
            j.as_object()
                .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        })
        .unwrap_or_else(|| "this kind of".into())
}

/// A file's mode on disk: as the API says, group-readable for the pod's fsGroup.
fn file_mode(f: &VolumeFile, fs_group: Option<u32>) -> u32 {
    let mode = f.mode & 0o7777;
    if fs_group.is_some() {
        mode | FS_GROUP_FILE_BITS
    } else {
        mode
    }
}

/// Write `files` into `dir` in the atomic layout, owned by `fs_group` when given. Returns
/// `false` (and writes nothing) when the volume already holds exactly this content.
pub fn write_files(
    dir: &Path,
    files: &[VolumeFile],
    fs_group: Option<u32>,
) -> std::io::Result<bool> {
    if current_matches(dir, files, fs_group) {
        return Ok(false);
    }
    let stamp = Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let data_dir = dir.join(&stamp);
    std::fs::create_dir_all(&data_dir)?;
    for f in files {
        let path = data_dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.data)?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(file_mode(f, fs_group)),
        )?;
    }
    if let Some(gid) = fs_group {
        chown_tree(&data_dir, gid)?;
    }
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join(DATA_LINK))?;

    let wanted: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.path.split('/').next().map(str::to_string))
        .collect();
    for top in &wanted {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(DATA_LINK).join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !wanted.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

/// Give `dir` and everything in it the group `gid`.
fn chown_tree(dir: &Path, gid: u32) -> std::io::Result<()> {
    lchown(dir, None, Some(gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), gid)?;
        } else {
            lchown(entry.path(), None, Some(gid))?;
        }
    }
    Ok(())
}

fn current_matches(dir: &Path, files: &[VolumeFile], fs_group: Option<u32>) -> bool {
    let Ok(target) = std::fs::read_link(dir.join(DATA_LINK)) else {
        return false;
    };
    let data_dir = dir.join(target);
    let mut expected: BTreeSet<PathBuf> = BTreeSet::new();
    for f in files {
        let path = data_dir.join(&f.path);
        let same = std::fs::metadata(&path).is_ok_and(|m| {
            m.permissions().mode() & 0o7777 == file_mode(f, fs_group)
                && fs_group.is_none_or(|g| m.gid() == g)
        }) && std::fs::read(&path).is_ok_and(|d| d[..] == f.data[..]);
        if !same {
            return false;
        }
        expected.insert(PathBuf::from(&f.path));
    }
    count_files(&data_dir) == Some(expected.len())
}

fn count_files(dir: &Path) -> Option<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let ty = entry.file_type().ok()?;
        if ty.is_dir() {
            n += count_files(&entry.path())?;
        } else {
            n += 1;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vk_provider_api::resolution::FilesKind;

    fn file(path: &str, data: &str, sensitive: bool) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            mode: 0o640,
            data: Arc::from(data.as_bytes()),
            sensitive,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vk-vol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn atomic_layout_and_update() {
        let dir = temp("atomic");
        std::fs::create_dir_all(&dir).unwrap();
        let v1 = [file("a", "1", false), file("sub/b", "2", false)];
        assert!(write_files(&dir, &v1, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
        assert_eq!(
            std::fs::metadata(dir.join("a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert!(
            !write_files(&dir, &v1, None).unwrap(),
            "unchanged content is not rewritten"
        );

        let v2 = [file("a", "changed", false)];
        assert!(write_files(&dir, &v2, None).unwrap());
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "changed");
        assert!(
            std::fs::symlink_metadata(dir.join("sub")).is_err(),
            "removed key is gone"
        );
        let stamps = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != DATA_LINK
            })
            .count();
        assert_eq!(stamps, 1, "the old generation is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_go_to_the_secret_dir_and_passthrough_is_refused() {
        let root = temp("prepare");
        let dirs = VolumeDirs {
            plain: root.join("plain"),
            secret: root.join("secret"),
        };
        let vols = vec![
            ResolvedVolume {
                name: "cfg".into(),
                source: ResolvedVolumeSource::Files {
                    kind: FilesKind::ConfigMap,
                    files: vec![file("k", "v", false)],
                },
            },
            ResolvedVolume {
                name: "tok".into(),
                source: ResolvedVolumeSource::Files {
                    kind: FilesKind::Projected,
                    files: vec![file("token", "t", true)],
                },
            },
            ResolvedVolume {
                name: "scratch".into(),
                source: ResolvedVolumeSource::EmptyDir {
                    medium: None,
                    size_limit: None,
                },
            },
        ];
        let prepared = prepare_pod_volumes(&dirs, &vols, None).unwrap();
        assert_eq!(prepared[0].host_path, dirs.plain.join("cfg"));
        assert_eq!(prepared[1].host_path, dirs.secret.join("tok"));
        assert_eq!(prepared[2].kind, VolumeKind::EmptyDir);
        assert_eq!(
            std::fs::metadata(dirs.plain.join("scratch"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o777
        );

        let changed = update_pod_volumes(
            &dirs,
            &[ResolvedVolume {
                name: "cfg".into(),
                source: ResolvedVolumeSource::Files {
                    kind: FilesKind::ConfigMap,
                    files: vec![file("k", "v2", false)],
                },
            }],
        )
        .unwrap();
        assert_eq!(changed, ["cfg"]);
        assert_eq!(
            std::fs::read_to_string(dirs.plain.join("cfg/k")).unwrap(),
            "v2"
        );

        let pvc: k8s_openapi::api::core::v1::Volume = serde_json::from_value(
            serde_json::json!({"name": "data", "persistentVolumeClaim": {"claimName": "c"}}),
        )
        .unwrap();
        let err = prepare_pod_volumes(
            &dirs,
            &[ResolvedVolume {
                name: "data".into(),
                source: ResolvedVolumeSource::Passthrough(Box::new(pvc)),
            }],
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"data\": persistentVolumeClaim volumes are not supported by the process provider"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
