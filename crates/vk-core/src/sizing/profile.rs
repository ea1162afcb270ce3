//! The profile file format (YAML; documented field by field in `vk-core/profiles/none.yaml`),
//! its validation, the embedded built-ins and name-or-path resolution.
//!
//! Validation is strict (unknown fields, unsorted tables, non-positive steps, unknown volume kinds
//! are errors) because a typo in a profile silently mis-sizes every pod on the node.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::units::{self, MIB};
use super::{Flavour, Method, Res, Rules, SizingProfile, VolumePolicy};

/// Built-in profile names, in the order they are listed to users.
const BUILTIN_NAMES: &[&str] = &["none", "cci", "cci2", "cube", "eci"];

const BUILTIN_FILES: &[(&str, &str)] = &[
    ("none", include_str!("../../profiles/none.yaml")),
    ("cci", include_str!("../../profiles/cci.yaml")),
    ("cci2", include_str!("../../profiles/cci2.yaml")),
    ("cube", include_str!("../../profiles/cube.yaml")),
    ("eci", include_str!("../../profiles/eci.yaml")),
];

/// Every volume source field of the core/v1 Volume, as spelled in the API.
pub(super) const VOLUME_KINDS: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// A memory range flavour may expand to at most this many sizes; more is surely a unit mistake.
const MAX_RANGE_ENTRIES: i64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "unknown sizing profile {name:?}: not a built-in profile ({}) nor a profile file",
        BUILTIN_NAMES.join(", ")
    )]
    Unknown { name: String },
    #[error("reading sizing profile {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sizing profile is not valid YAML for the profile format: {message}")]
    Yaml { message: String },
    #[error("sizing profile {profile}: {message}")]
    Invalid { profile: String, message: String },
    #[error("sizing profile file {}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ProfileError>,
    },
}

/// A quantity as written in the file: `250m`, `1Gi`, or a bare YAML number (`2`, `0.25`), which
/// Kubernetes reads as cores for CPU and bytes for memory.
#[derive(Debug, Clone)]
struct QuantityText(String);

impl<'de> Deserialize<'de> for QuantityText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = QuantityText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 250m, 2 or 1Gi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<QuantityText, E> {
                Ok(QuantityText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<QuantityText, E> {
                if !v.is_finite() {
                    return Err(E::custom("a quantity must be a finite number"));
                }
                // f64's Display never uses an exponent, so this is a plain decimal.
                Ok(QuantityText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum MethodName {
    None,
    Rules,
    #[serde(alias = "flavors")]
    Flavours,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    description: String,
    method: MethodName,
    cpu_step: Option<QuantityText>,
    container_min_memory: Option<QuantityText>,
    pod_memory_step: Option<QuantityText>,
    memory_per_cpu: Option<RatioFile>,
    max_cpu: Option<QuantityText>,
    max_memory: Option<QuantityText>,
    #[serde(alias = "flavors")]
    flavours: Option<Vec<FlavourFile>>,
    default_resources: Option<ResourcesFile>,
    volumes: Option<Vec<String>>,
    empty_dir_sub_path: Option<bool>,
    max_pods: Option<u32>,
    max_config_volume_bytes: Option<QuantityText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatioFile {
    min: Option<QuantityText>,
    max: Option<QuantityText>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FlavourFile {
    cpu: QuantityText,
    memory: Option<Vec<QuantityText>>,
    memory_from: Option<QuantityText>,
    memory_to: Option<QuantityText>,
    memory_step: Option<QuantityText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    cpu: Option<QuantityText>,
    memory: Option<QuantityText>,
}

/// Collects the profile's name into every validation error.
struct Check<'a> {
    profile: &'a str,
}

impl Check<'_> {
    fn fail(&self, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            profile: self.profile.to_string(),
            message: message.into(),
        }
    }

    fn cpu(&self, field: &str, q: &QuantityText) -> Result<i64, ProfileError> {
        let v = units::millis_of(&q.0).map_err(|e| self.fail(format!("{field}: {e}")))?;
        if v < 0 {
            return Err(self.fail(format!("{field} must not be negative, got {}", q.0)));
        }
        Ok(v)
    }

    fn positive_cpu(&self, field: &str, q: &QuantityText) -> Result<i64, ProfileError> {
        let v = self.cpu(field, q)?;
        if v == 0 {
            return Err(self.fail(format!("{field} must be positive, got {}", q.0)));
        }
        Ok(v)
    }

    fn memory(&self, field: &str, q: &QuantityText) -> Result<i64, ProfileError> {
        let v = units::bytes_of(&q.0).map_err(|e| self.fail(format!("{field}: {e}")))?;
        if v < 0 {
            return Err(self.fail(format!("{field} must not be negative, got {}", q.0)));
        }
        // A bare number is bytes; `memory: 2` almost certainly meant 2Gi.
        if v > 0 && v < MIB {
            return Err(self.fail(format!(
                "{field} is {} bytes, below 1Mi; a bare number is bytes (write e.g. 1Gi)",
                v
            )));
        }
        Ok(v)
    }

    fn positive_memory(&self, field: &str, q: &QuantityText) -> Result<i64, ProfileError> {
        let v = self.memory(field, q)?;
        if v == 0 {
            return Err(self.fail(format!("{field} must be positive, got {}", q.0)));
        }
        Ok(v)
    }
}

impl SizingProfile {
    /// Built-in profile by name: "none", "cci", "cci2", "cube", "eci".
    pub fn builtin(name: &str) -> Option<SizingProfile> {
        let (_, text) = BUILTIN_FILES.iter().find(|(n, _)| *n == name)?;
        // The embedded files are validated by tests; a broken one reads as absent, not a panic.
        SizingProfile::from_yaml(text).ok()
    }

    pub fn builtin_names() -> &'static [&'static str] {
        BUILTIN_NAMES
    }

    /// A built-in name, or else a path to a user's YAML file in the same format.
    pub fn resolve(name_or_path: &str) -> Result<SizingProfile, ProfileError> {
        if BUILTIN_NAMES.contains(&name_or_path) {
            return SizingProfile::builtin(name_or_path).ok_or_else(|| ProfileError::Invalid {
                profile: name_or_path.to_string(),
                message: "the embedded built-in profile does not validate".to_string(),
            });
        }
        let path = Path::new(name_or_path);
        // Something that looks like a path is read (and its read error reported); a bare word
        // that is neither a built-in nor an existing file is a mistyped profile name.
        let looks_like_path = name_or_path.contains(['/', '\\'])
            || [".yaml", ".yml"]
                .iter()
                .any(|ext| name_or_path.ends_with(ext));
        if !looks_like_path && !path.is_file() {
            return Err(ProfileError::Unknown {
                name: name_or_path.to_string(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        SizingProfile::from_yaml(&text).map_err(|e| ProfileError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses and validates a profile in the built-ins' format.
    pub fn from_yaml(text: &str) -> Result<SizingProfile, ProfileError> {
        let file: ProfileFile = serde_saphyr::from_str(text).map_err(|e| ProfileError::Yaml {
            message: e.to_string(),
        })?;
        validate(file)
    }
}

fn validate(file: ProfileFile) -> Result<SizingProfile, ProfileError> {
    let name = file.name.trim().to_string();
    let check = Check {
        profile: if name.is_empty() { "<unnamed>" } else { &name },
    };
    if name.is_empty() {
        return Err(check.fail("name must not be empty"));
    }

    let rule_fields = [
        ("cpuStep", file.cpu_step.is_some()),
        ("containerMinMemory", file.container_min_memory.is_some()),
        ("podMemoryStep", file.pod_memory_step.is_some()),
        ("memoryPerCpu", file.memory_per_cpu.is_some()),
        ("maxCpu", file.max_cpu.is_some()),
        ("maxMemory", file.max_memory.is_some()),
    ];
    if file.method != MethodName::Rules
        && let Some((field, _)) = rule_fields.iter().find(|(_, set)| *set)
    {
        return Err(check.fail(format!("{field} only applies to method: rules")));
    }
    if file.method != MethodName::Flavours && file.flavours.is_some() {
        return Err(check.fail("flavours only applies to method: flavours"));
    }

    let method = match file.method {
        MethodName::None => Method::None,
        MethodName::Rules => Method::Rules(rules(&check, &file)?),
        MethodName::Flavours => {
            let list = file
                .flavours
                .as_deref()
                .ok_or_else(|| check.fail("method: flavours needs a flavours table"))?;
            Method::Flavours(flavours(&check, list)?)
        }
    };

    let default_resources = match &file.default_resources {
        None => None,
        Some(_) if method == Method::None => {
            return Err(check.fail("defaultResources does not apply to method: none"));
        }
        Some(d) => {
            let cpu = d
                .cpu
                .as_ref()
                .map(|q| check.cpu("defaultResources.cpu", q))
                .transpose()?
                .unwrap_or(0);
            let memory = d
                .memory
                .as_ref()
                .map(|q| check.memory("defaultResources.memory", q))
                .transpose()?
                .unwrap_or(0);
            if cpu == 0 && memory == 0 {
                return Err(check.fail("defaultResources must set a positive cpu or memory"));
            }
            Some(Res { cpu, memory })
        }
    };

    let volumes = match &file.volumes {
        None => VolumePolicy::AllButHostPath,
        Some(list) if list.iter().any(|k| k == "*") => VolumePolicy::Any,
        Some(list) => {
            if let Some(bad) = list.iter().find(|k| !VOLUME_KINDS.contains(&k.as_str())) {
                return Err(check.fail(format!(
                    "volumes: unknown volume kind {bad:?} (kinds are the Volume's source fields: {})",
                    VOLUME_KINDS.join(", ")
                )));
            }
            VolumePolicy::Only(list.clone())
        }
    };

    if file.max_pods == Some(0) {
        return Err(check.fail("maxPods must be positive"));
    }
    let max_config_volume_bytes = file
        .max_config_volume_bytes
        .as_ref()
        .map(|q| check.positive_memory("maxConfigVolumeBytes", q))
        .transpose()?
        .map(|v| v.unsigned_abs());

    Ok(SizingProfile {
        description: file.description.trim().to_string(),
        method,
        default_resources,
        volumes,
        empty_dir_sub_path: file.empty_dir_sub_path.unwrap_or(true),
        max_pods: file.max_pods,
        max_config_volume_bytes,
        name,
    })
}

fn rules(check: &Check<'_>, file: &ProfileFile) -> Result<Rules, ProfileError> {
    let opt_cpu = |field: &str, q: &Option<QuantityText>| {
        q.as_ref().map(|q| check.positive_cpu(field, q)).transpose()
    };
    let opt_mem = |field: &str, q: &Option<QuantityText>| {
        q.as_ref()
            .map(|q| check.positive_memory(field, q))
            .transpose()
    };
    let (min, max) = match &file.memory_per_cpu {
        None => (None, None),
        Some(r) => (
            opt_mem("memoryPerCpu.min", &r.min)?,
            opt_mem("memoryPerCpu.max", &r.max)?,
        ),
    };
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(check.fail("memoryPerCpu.min must not exceed memoryPerCpu.max"));
    }
    Ok(Rules {
        cpu_step: opt_cpu("cpuStep", &file.cpu_step)?,
        container_min_memory: opt_mem("containerMinMemory", &file.container_min_memory)?,
        pod_memory_step: opt_mem("podMemoryStep", &file.pod_memory_step)?,
        memory_per_cpu_min: min,
        memory_per_cpu_max: max,
        max_cpu: opt_cpu("maxCpu", &file.max_cpu)?,
        max_memory: opt_mem("maxMemory", &file.max_memory)?,
    })
}

/// Expands the table into (cpu, memory) pairs, requiring it sorted so the file reads like the
/// vendor's price list and a misplaced row is caught rather than silently reordered.
fn flavours(check: &Check<'_>, list: &[FlavourFile]) -> Result<Vec<Flavour>, ProfileError> {
    if list.is_empty() {
        return Err(check.fail("flavours must not be empty"));
    }
    let mut out = Vec::new();
    let mut last_cpu = 0;
    for (i, f) in list.iter().enumerate() {
        let at = format!("flavours[{i}]");
        let cpu = check.positive_cpu(&format!("{at}.cpu"), &f.cpu)?;
        if cpu <= last_cpu {
            return Err(check.fail(format!(
                "{at}.cpu {} must be larger than the previous row's (rows sorted by cpu, one row per cpu)",
                f.cpu.0
            )));
        }
        last_cpu = cpu;
        let range = (&f.memory_from, &f.memory_to, &f.memory_step);
        let memories = match (&f.memory, range) {
            (Some(list), (None, None, None)) => {
                if list.is_empty() {
                    return Err(check.fail(format!("{at}.memory must not be empty")));
                }
                let mut mems = Vec::with_capacity(list.len());
                for (j, q) in list.iter().enumerate() {
                    let m = check.positive_memory(&format!("{at}.memory[{j}]"), q)?;
                    if mems.last().is_some_and(|prev| *prev >= m) {
                        return Err(check.fail(format!(
                            "{at}.memory must be strictly ascending ({} is out of order)",
                            q.0
                        )));
                    }
                    mems.push(m);
                }
                mems
            }
            (None, (Some(from), Some(to), Some(step))) => {
                let from = check.positive_memory(&format!("{at}.memoryFrom"), from)?;
                let to = check.positive_memory(&format!("{at}.memoryTo"), to)?;
                let step = check.positive_memory(&format!("{at}.memoryStep"), step)?;
                if to < from {
                    return Err(check.fail(format!("{at}: memoryTo is below memoryFrom")));
                }
                if (to - from) % step != 0 {
                    return Err(check.fail(format!(
                        "{at}: memoryTo is not memoryFrom plus a whole number of memoryStep"
                    )));
                }
                let count = (to - from) / step + 1;
                if count > MAX_RANGE_ENTRIES {
                    return Err(check.fail(format!(
                        "{at}: the memory range has {count} sizes, more than {MAX_RANGE_ENTRIES}"
                    )));
                }
                (0..count).map(|k| from + k * step).collect()
            }
            _ => {
                return Err(check.fail(format!(
                    "{at} needs either memory: [list] or all of memoryFrom, memoryTo, memoryStep"
                )));
            }
        };
        out.extend(memories.into_iter().map(|memory| Flavour { cpu, memory }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::units::GIB;

    #[test]
    fn every_builtin_parses_validates_and_is_named_after_its_file() {
        assert_eq!(BUILTIN_FILES.len(), BUILTIN_NAMES.len());
        for (name, text) in BUILTIN_FILES {
            assert!(
                BUILTIN_NAMES.contains(name),
                "{name} missing from BUILTIN_NAMES"
            );
            let p = match SizingProfile::from_yaml(text) {
                Ok(p) => p,
                Err(e) => panic!("built-in {name}: {e}"),
            };
            assert_eq!(p.name, *name);
            assert!(!p.description.is_empty(), "{name} has no description");
            assert!(SizingProfile::builtin(name).is_some());
            assert!(SizingProfile::resolve(name).is_ok());
        }
        assert_eq!(SizingProfile::builtin_names(), BUILTIN_NAMES);
        assert!(SizingProfile::builtin("nope").is_none());
    }

    #[test]
    fn builtin_none_is_the_passthrough() {
        assert_eq!(SizingProfile::builtin("none"), Some(SizingProfile::none()));
        assert!(SizingProfile::none().is_none());
        for name in ["cci", "cci2", "cube", "eci"] {
            assert!(
                SizingProfile::builtin(name).is_some_and(|p| !p.is_none()),
                "{name}"
            );
        }
    }

    #[test]
    fn builtin_tables_hold_the_vendor_values() {
        let cci = SizingProfile::builtin("cci").unwrap();
        assert_eq!(
            cci.method,
            Method::Rules(Rules {
                cpu_step: Some(250),
                container_min_memory: Some(214_748_365),
                pod_memory_step: Some(GIB),
                memory_per_cpu_min: Some(2 * GIB),
                memory_per_cpu_max: Some(8 * GIB),
                max_cpu: Some(32_000),
                max_memory: Some(256 * GIB),
            })
        );
        assert!(!cci.empty_dir_sub_path);

        let table = |name: &str| -> Vec<(i64, i64)> {
            match SizingProfile::builtin(name).unwrap().method {
                Method::Flavours(f) => f.iter().map(|f| (f.cpu, f.memory)).collect(),
                other => panic!("{name}: {other:?}"),
            }
        };
        let gib_rows = |rows: &[(i64, &[i64])]| -> Vec<(i64, i64)> {
            rows.iter()
                .flat_map(|(c, ms)| ms.iter().map(move |m| (*c, *m)))
                .collect()
        };
        let half = GIB / 2;
        let cube = table("cube");
        let want_cube: Vec<(i64, i64)> = [
            (500, vec![half, GIB, 2 * GIB]),
            (1000, vec![GIB, 2 * GIB, 4 * GIB]),
            (2000, vec![2 * GIB, 4 * GIB, 8 * GIB]),
            (4000, vec![4 * GIB, 8 * GIB, 16 * GIB]),
            (8000, vec![8 * GIB, 16 * GIB]),
        ]
        .into_iter()
        .flat_map(|(c, ms)| ms.into_iter().map(move |m| (c, m)))
        .collect();
        assert_eq!(cube, want_cube);

        let g = |v: &[i64]| v.iter().map(|x| x * GIB).collect::<Vec<_>>();
        let range = |from: i64, to: i64, step: i64| -> Vec<i64> {
            (from..=to).step_by(step as usize).collect()
        };
        let cci2_rows: Vec<(i64, Vec<i64>)> = vec![
            (250, vec![half, GIB, 2 * GIB]),
            (500, vec![half, GIB, 2 * GIB, 3 * GIB, 4 * GIB]),
            (1000, g(&range(1, 8, 1))),
            (2000, g(&range(2, 16, 1))),
            (4000, g(&range(4, 32, 1))),
            (8000, g(&range(8, 64, 4))),
            (16_000, g(&range(16, 128, 8))),
            (32_000, g(&[32, 64, 128, 256])),
            (48_000, g(&[96, 192, 384])),
            (64_000, g(&[128, 256, 512])),
        ];
        let cci2_rows: Vec<(i64, &[i64])> =
            cci2_rows.iter().map(|(c, m)| (*c, m.as_slice())).collect();
        assert_eq!(table("cci2"), gib_rows(&cci2_rows));

        let eci_rows: Vec<(i64, Vec<i64>)> = vec![
            (250, vec![half, GIB]),
            (500, g(&[1, 2])),
            (1000, g(&[2, 4, 8])),
            (2000, g(&[1, 2, 4, 8, 16])),
            (4000, g(&[2, 4, 8, 16, 32])),
            (8000, g(&[4, 8, 16, 32, 64])),
            (12_000, g(&[12, 24, 48, 96])),
            (16_000, g(&[16, 32, 64, 128])),
            (24_000, g(&[24, 48, 96, 192])),
            (32_000, g(&[32, 64, 128, 256])),
            (52_000, g(&[96, 192, 384])),
            (64_000, g(&[128, 256, 512])),
        ];
        let eci_rows: Vec<(i64, &[i64])> =
            eci_rows.iter().map(|(c, m)| (*c, m.as_slice())).collect();
        assert_eq!(table("eci"), gib_rows(&eci_rows));

        let cube = SizingProfile::builtin("cube").unwrap();
        assert_eq!(cube.max_pods(), Some(200));
        assert_eq!(cube.max_config_volume_bytes(), Some(30 * 1024 * 1024));
        assert_eq!(
            cube.default_resources,
            Some(Res {
                cpu: 500,
                memory: GIB
            })
        );
        let eci = SizingProfile::builtin("eci").unwrap();
        assert_eq!(
            eci.default_resources,
            Some(Res {
                cpu: 2000,
                memory: 4 * GIB
            })
        );
        assert_eq!(eci.volumes, VolumePolicy::AllButHostPath);
        assert_eq!(eci.max_pods(), None);
        assert!(
            SizingProfile::builtin("cci2")
                .unwrap()
                .default_resources
                .is_none()
        );
    }

    #[test]
    fn a_user_file_in_the_same_format_loads() {
        let text = r#"
# my backend
name: mine
description: two sizes, no hostPath
method: flavours
flavours:
  - cpu: 0.5
    memory: [1Gi]
  - cpu: 2
    memoryFrom: 2Gi
    memoryTo: 6Gi
    memoryStep: 2Gi
defaultResources: {cpu: 500m}
volumes: [configMap, emptyDir]
maxPods: 10
maxConfigVolumeBytes: 1Mi
"#;
        let p = SizingProfile::from_yaml(text).unwrap();
        assert_eq!(p.name, "mine");
        assert_eq!(p.description, "two sizes, no hostPath");
        assert_eq!(
            p.method,
            Method::Flavours(vec![
                Flavour {
                    cpu: 500,
                    memory: GIB
                },
                Flavour {
                    cpu: 2000,
                    memory: 2 * GIB
                },
                Flavour {
                    cpu: 2000,
                    memory: 4 * GIB
                },
                Flavour {
                    cpu: 2000,
                    memory: 6 * GIB
                },
            ])
        );
        assert_eq!(
            p.default_resources,
            Some(Res {
                cpu: 500,
                memory: 0
            })
        );
        assert_eq!(
            p.volumes,
            VolumePolicy::Only(vec!["configMap".into(), "emptyDir".into()])
        );
        assert_eq!(p.max_pods(), Some(10));
        assert_eq!(p.max_config_volume_bytes(), Some(1 << 20));
        assert!(p.empty_dir_sub_path);

        let rules = "name: r\nmethod: rules\ncpuStep: 100m\nmaxMemory: 8Gi\n";
        let p = SizingProfile::from_yaml(rules).unwrap();
        assert_eq!(
            p.method,
            Method::Rules(Rules {
                cpu_step: Some(100),
                max_memory: Some(8 * GIB),
                ..Rules::default()
            })
        );
    }

    #[test]
    fn resolve_reads_a_path_and_reports_names_and_io() {
        let dir = std::env::temp_dir().join(format!("vk-sizing-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("mine.yaml");
        std::fs::write(&good, "name: mine\nmethod: none\n").unwrap();
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "name: bad\nmethod: rules\ncpuStep: -1\n").unwrap();

        let p = SizingProfile::resolve(good.to_str().unwrap()).unwrap();
        assert_eq!(p.name, "mine");
        assert!(p.is_none());

        let e = SizingProfile::resolve(bad.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(&e, ProfileError::InFile { source, .. } if matches!(**source, ProfileError::Invalid { .. })),
            "{e:?}"
        );
        assert!(e.to_string().contains("bad.yaml"), "{e}");

        let missing = dir.join("missing.yaml");
        let e = SizingProfile::resolve(missing.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, ProfileError::Io { .. }), "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();

        let e = SizingProfile::resolve("nope").unwrap_err();
        assert!(matches!(e, ProfileError::Unknown { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("\"nope\""), "{msg}");
        for name in BUILTIN_NAMES {
            assert!(msg.contains(name), "{msg} should list {name}");
        }
    }

    #[test]
    fn invalid_profiles_are_refused_with_the_reason() {
        let base = "name: x\n";
        let cases: &[(&str, &str, &str)] = &[
            ("not yaml", "name: [unclosed\n", "YAML"),
            (
                "unknown field",
                "name: x\nmethod: none\ncpuStepp: 1\n",
                "cpuStepp",
            ),
            ("unknown method", "name: x\nmethod: magic\n", "magic"),
            ("no method", "name: x\n", "method"),
            (
                "empty name",
                "name: ''\nmethod: none\n",
                "name must not be empty",
            ),
            (
                "negative step",
                "method: rules\ncpuStep: -250m\n",
                "cpuStep must not be negative",
            ),
            (
                "zero step",
                "method: rules\npodMemoryStep: 0\n",
                "podMemoryStep must be positive",
            ),
            (
                "bad quantity",
                "method: rules\nmaxCpu: lots\n",
                "maxCpu: invalid quantity",
            ),
            (
                "bare memory number",
                "method: rules\nmaxMemory: 256\n",
                "below 1Mi",
            ),
            (
                "ratio inverted",
                "method: rules\nmemoryPerCpu: {min: 8Gi, max: 2Gi}\n",
                "memoryPerCpu.min must not exceed",
            ),
            (
                "rule field on flavours",
                "method: flavours\ncpuStep: 1\nflavours: [{cpu: 1, memory: [1Gi]}]\n",
                "cpuStep only applies",
            ),
            (
                "flavours on rules",
                "method: rules\nflavours: [{cpu: 1, memory: [1Gi]}]\n",
                "flavours only applies",
            ),
            (
                "flavours missing",
                "method: flavours\n",
                "needs a flavours table",
            ),
            (
                "flavours empty",
                "method: flavours\nflavours: []\n",
                "must not be empty",
            ),
            (
                "cpu rows unsorted",
                "method: flavours\nflavours: [{cpu: 2, memory: [2Gi]}, {cpu: 1, memory: [1Gi]}]\n",
                "flavours[1].cpu 1 must be larger",
            ),
            (
                "memory unsorted",
                "method: flavours\nflavours: [{cpu: 1, memory: [2Gi, 1Gi]}]\n",
                "strictly ascending",
            ),
            (
                "negative range step",
                "method: flavours\nflavours: [{cpu: 1, memoryFrom: 1Gi, memoryTo: 4Gi, memoryStep: -1Gi}]\n",
                "memoryStep must not be negative",
            ),
            (
                "range not whole steps",
                "method: flavours\nflavours: [{cpu: 1, memoryFrom: 1Gi, memoryTo: 4Gi, memoryStep: 2Gi}]\n",
                "whole number of memoryStep",
            ),
            (
                "list and range",
                "method: flavours\nflavours: [{cpu: 1, memory: [1Gi], memoryFrom: 1Gi}]\n",
                "needs either",
            ),
            (
                "huge range",
                "method: flavours\nflavours: [{cpu: 1, memoryFrom: 1Mi, memoryTo: 1Ti, memoryStep: 1Mi}]\n",
                "more than 4096",
            ),
            (
                "zero cpu flavour",
                "method: flavours\nflavours: [{cpu: 0, memory: [1Gi]}]\n",
                "flavours[0].cpu must be positive",
            ),
            (
                "unknown volume kind",
                "method: none\nvolumes: [configmap]\n",
                "unknown volume kind \"configmap\"",
            ),
            (
                "defaults on none",
                "method: none\ndefaultResources: {cpu: 1}\n",
                "does not apply",
            ),
            (
                "empty defaults",
                "method: rules\ndefaultResources: {cpu: 0}\n",
                "positive cpu or memory",
            ),
            (
                "zero maxPods",
                "method: none\nmaxPods: 0\n",
                "maxPods must be positive",
            ),
            ("negative maxPods", "method: none\nmaxPods: -3\n", "YAML"),
        ];
        for (what, body, want) in cases {
            let text = if body.starts_with("name:") {
                body.to_string()
            } else {
                format!("{base}{body}")
            };
            match SizingProfile::from_yaml(&text) {
                Ok(p) => panic!("{what}: accepted {p:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(want),
                        "{what}: {msg:?} should mention {want:?}"
                    );
                }
            }
        }
    }
}
