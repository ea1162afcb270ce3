//! Settings of the process provider (`--provider-config`, YAML or JSON, camelCase).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::logs::LogConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid process provider config: {0}")]
    Invalid(String),
}

/// A root filesystem for an image name, and the command it runs when the pod names none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageConfig {
    pub root: PathBuf,
    #[serde(default)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProcessConfig {
    /// Where pods live: volumes, logs, shim records. Survives vkubelet restarts.
    pub state_dir: PathBuf,
    /// Where secret volumes and `medium: Memory` emptyDirs live; should be a tmpfs so secrets
    /// never reach a disk.
    pub secrets_dir: PathBuf,
    /// Enforce CPU and memory limits with cgroups (when the host allows it).
    pub enforce_limits: bool,
    /// Image name (as in the pod spec) → root filesystem. Images not listed run on the host's
    /// root filesystem, read-only, and must name a command.
    pub images: BTreeMap<String, ImageConfig>,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// The command that runs a shim; empty means this executable with `process-shim`.
    pub shim_command: Vec<String>,
    /// Node capacity; defaults from the host (CPUs, memory) and 110 pods.
    pub capacity: BTreeMap<String, String>,
    pub log_max_bytes: u64,
    pub log_max_files: usize,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        let log = LogConfig::default();
        Self {
            state_dir: PathBuf::from("/var/lib/vkubelet/process"),
            secrets_dir: PathBuf::from("/run/vkubelet/process-secrets"),
            enforce_limits: true,
            images: BTreeMap::new(),
            bwrap: PathBuf::from("bwrap"),
            shim_command: Vec::new(),
            capacity: BTreeMap::new(),
            log_max_bytes: log.max_bytes,
            log_max_files: log.max_files,
        }
    }
}

impl ProcessConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?
        };
        cfg.validated()
    }

    fn validated(mut self) -> Result<Self, ConfigError> {
        if self.log_max_files == 0 || self.log_max_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "logMaxFiles must be at least 1 and logMaxBytes at least 1024".into(),
            ));
        }
        for (image, ic) in &self.images {
            if !ic.root.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "images.{image}.root must be an absolute path"
                )));
            }
        }
        let host = host_capacity();
        for (k, v) in host {
            self.capacity.entry(k).or_insert(v);
        }
        Ok(self)
    }

    pub fn log(&self) -> LogConfig {
        LogConfig {
            max_bytes: self.log_max_bytes,
            max_files: self.log_max_files,
        }
    }
}

/// CPUs and memory of this host, and the kubelet's default pod limit.
fn host_capacity() -> BTreeMap<String, String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    BTreeMap::from([
        ("cpu".to_string(), cpus.to_string()),
        ("memory".to_string(), format!("{mem_kib}Ki")),
        ("pods".to_string(), "110".to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_capacity_from_the_host() {
        let cfg = ProcessConfig::parse("stateDir: /tmp/x\n").unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/x"));
        assert!(cfg.capacity.contains_key("cpu"));
        assert!(cfg.capacity["memory"].ends_with("Ki"));
        assert_eq!(cfg.capacity["pods"], "110");
    }

    #[test]
    fn images_and_errors() {
        let cfg = ProcessConfig::parse(
            r#"{"images": {"busybox": {"root": "/srv/busybox", "command": ["sh"]}}, "capacity": {"pods": "20"}}"#,
        )
        .unwrap();
        assert_eq!(cfg.images["busybox"].command, ["sh"]);
        assert_eq!(cfg.capacity["pods"], "20");
        assert!(ProcessConfig::parse(r#"{"images": {"x": {"root": "rel"}}}"#).is_err());
        assert!(ProcessConfig::parse(r#"{"bogus": 1}"#).is_err());
        assert!(ProcessConfig::parse(r#"{"logMaxFiles": 0}"#).is_err());
    }
}
