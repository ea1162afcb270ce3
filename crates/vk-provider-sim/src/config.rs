//! The sim backend's settings, and the runtime overrides read from its control file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Deserializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid sim config: {0}")]
    Invalid(String),
}

/// A duration written as `250ms`, `2s`, `1.5s`, `1m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 2s, 1m"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// How long something takes: fixed, or drawn from a distribution per pod.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Latency {
    Fixed(#[serde(deserialize_with = "de_duration")] Duration),
    Uniform {
        #[serde(deserialize_with = "de_duration")]
        min: Duration,
        #[serde(deserialize_with = "de_duration")]
        max: Duration,
    },
    Exponential {
        #[serde(deserialize_with = "de_duration")]
        mean: Duration,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Fixed(Duration::ZERO)
    }
}

impl Latency {
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform { min, max } => {
                if max <= min {
                    *min
                } else {
                    Duration::from_secs_f64(rng.random_range(min.as_secs_f64()..max.as_secs_f64()))
                }
            }
            Latency::Exponential { mean } => {
                let u: f64 = rng.random_range(f64::EPSILON..1.0);
                Duration::from_secs_f64((-u.ln() * mean.as_secs_f64()).min(3600.0))
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        matches!(self, Latency::Fixed(d) if d.is_zero())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SimConfig {
    pub start_latency: Latency,
    pub stop_latency: Latency,
    /// Let `stopLatency` run past the pod's grace period (and past a later forced delete): a
    /// backend whose deletes take as long as they take, like a remote API's.
    pub stop_beyond_grace: bool,
    pub failure_rate: f64,
    /// Share of deletes that fail (Transient), like `failureRate` for creates.
    pub delete_failure_rate: f64,
    pub capacity: BTreeMap<String, String>,
    #[serde(deserialize_with = "de_opt_duration")]
    pub pod_lifetime: Option<Duration>,
    pub exit_code: i32,
    pub sold_out: bool,
    pub control_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Write what the core resolved for each pod to `<stateDir>/received/<uid>.json`.
    pub record_resolved: bool,
    /// Most bytes of resolved volume files a pod may carry (a serverless backend's limit).
    pub max_volume_bytes: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            start_latency: Latency::default(),
            stop_latency: Latency::default(),
            stop_beyond_grace: false,
            failure_rate: 0.0,
            delete_failure_rate: 0.0,
            capacity: [("cpu", "1000"), ("memory", "4Ti"), ("pods", "10000")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pod_lifetime: None,
            exit_code: 0,
            sold_out: false,
            control_file: None,
            state_dir: None,
            record_resolved: false,
            max_volume_bytes: None,
        }
    }
}

impl SimConfig {
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validated()
    }

    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let cfg: SimConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validated()
    }

    /// Load from a JSON or YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        if text.trim_start().starts_with('{') {
            Self::from_json_str(&text)
        } else {
            Self::from_yaml_str(&text)
        }
    }

    fn validated(mut self) -> Result<Self, ConfigError> {
        for (name, rate) in [
            ("failureRate", self.failure_rate),
            ("deleteFailureRate", self.delete_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be within 0..1, got {rate}"
                )));
            }
        }
        if self.record_resolved && self.state_dir.is_none() {
            return Err(ConfigError::Invalid(
                "recordResolved needs a stateDir to write to".into(),
            ));
        }
        let defaults = SimConfig::default().capacity;
        for (k, v) in defaults {
            self.capacity.entry(k).or_insert(v);
        }
        if self.pod_capacity().is_none() {
            return Err(ConfigError::Invalid(format!(
                "capacity.pods must be a whole number, got {:?}",
                self.capacity.get("pods")
            )));
        }
        Ok(self)
    }

    pub fn pod_capacity(&self) -> Option<usize> {
        self.capacity.get("pods").and_then(|p| p.parse().ok())
    }
}

/// Runtime overrides from the control file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Control {
    pub fail_creates: bool,
    pub sold_out: bool,
    pub fail_deletes: bool,
}

impl Control {
    /// A missing or unreadable file means no overrides.
    pub fn read(path: &Path) -> Control {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("250ms", 250),
            ("2s", 2000),
            ("1.5s", 1500),
            ("1m", 60_000),
            ("0s", 0),
            ("1h", 3_600_000),
        ] {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_millis(ms), "{s}");
        }
        for bad in ["", "5", "1x", "ms", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn parses_every_field_json_and_yaml() {
        let c = SimConfig::from_json_str(
            r#"{"startLatency":{"uniform":{"min":"10ms","max":"20ms"}},"stopLatency":{"fixed":"1s"},
               "failureRate":0.5,"capacity":{"pods":"7"},"podLifetime":"3s","exitCode":2,"soldOut":true,
               "controlFile":"/tmp/c","stateDir":"/tmp/s","deleteFailureRate":0.25,"stopBeyondGrace":true}"#,
        )
        .unwrap();
        assert_eq!(c.pod_capacity(), Some(7));
        assert_eq!(
            c.capacity["cpu"], "1000",
            "unset capacity keys keep defaults"
        );
        assert_eq!(c.pod_lifetime, Some(Duration::from_secs(3)));
        assert_eq!(c.delete_failure_rate, 0.25);
        assert!(c.stop_beyond_grace);
        let y =
            SimConfig::from_yaml_str("startLatency: {exponential: {mean: 1s}}\nsoldOut: true\n")
                .unwrap();
        assert!(y.sold_out);
        assert_eq!(
            y.start_latency,
            Latency::Exponential {
                mean: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn rejects_bad_config_clearly() {
        let e = SimConfig::from_json_str(r#"{"failureRate": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("failureRate"), "{e}");
        let e = SimConfig::from_json_str(r#"{"deleteFailureRate": -0.1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("deleteFailureRate"), "{e}");
        assert!(SimConfig::from_json_str(r#"{"bogus": 1}"#).is_err());
        assert!(SimConfig::from_json_str(r#"{"podLifetime": "soon"}"#).is_err());
        assert!(SimConfig::from_json_str(r#"{"capacity": {"pods": "many"}}"#).is_err());
    }

    #[test]
    fn latency_samples_stay_in_range() {
        let mut rng = rand::rng();
        let u = Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        for _ in 0..100 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d < Duration::from_millis(20));
        }
        assert!(Latency::default().is_zero());
    }
}
