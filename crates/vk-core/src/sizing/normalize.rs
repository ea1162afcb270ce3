//! Normalisation: a pod's effective CPU/memory, the profile's rules or flavour choice, and the
//! rewrite of container resources so the backend is asked for exactly the size it will bill.
//!
//! Definitions shared by every profile:
//! - a container's effective CPU (memory) is its limit if set, else its request, else 0: the
//!   backend makes requests equal to limits, and limits win;
//! - a container is BestEffort when both effective values are 0 (Kubernetes' QoS rule, where a
//!   zero quantity counts as unset);
//! - the pod's need is Kubernetes' effective request: max(app containers + sidecars, the peak of
//!   the init sequence), per resource;
//! - increments a pod-level rule causes go to the first non-BestEffort app container (or, if every
//!   app container is BestEffort, to the first app container) and are sized so the pod's effective
//!   request reaches the target even when an init container dominates.
//!
//! All arithmetic is in `i128` millicores/bytes with checked products, so no input panics.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::units::{self, ceil_div, ceil_to, cores, gib};
use super::{
    ContainerSize, Flavour, Method, NormalizationError, Normalized, PodSize, Rules, SizingProfile,
};

/// The rule every rules-method profile applies last: a backend cannot start a pod with no CPU.
const NEEDS_CPU_RULE: &str = "a pod needs CPU in at least one container";

/// Enough passes for any sane ratio/step combination; more means the rules cannot agree.
const RATIO_PASSES: usize = 8;

/// One container during normalisation (init containers first, in spec order).
#[derive(Debug, Clone)]
struct Slot {
    name: String,
    init: bool,
    /// An init container with `restartPolicy: Always` runs beside the app containers.
    sidecar: bool,
    cpu: i128,
    memory: i128,
    best_effort: bool,
}

/// A CPU (millicores) and memory (bytes) pair during normalisation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Total {
    cpu: i128,
    memory: i128,
}

impl SizingProfile {
    /// Normalise the pod's container resources. Returns the pod with resources rewritten plus
    /// the sizes.
    pub fn normalize(&self, pod: &Pod) -> Result<Normalized, NormalizationError> {
        let mut slots = read(pod).map_err(|m| self.fail(m))?;
        if self.is_none() {
            return self.passthrough(pod, &slots);
        }
        if !slots.iter().any(|s| !s.init) {
            return Err(self.fail("the pod has no containers to size"));
        }
        if slots.iter().all(|s| s.best_effort)
            && let Some(d) = self.default_resources
            && let Some(first) = slots.iter_mut().find(|s| !s.init)
        {
            first.cpu = i128::from(d.cpu);
            first.memory = i128::from(d.memory);
            first.best_effort = false;
        }
        let target = match &self.method {
            Method::Rules(r) => self.apply_rules(r, &mut slots)?,
            Method::Flavours(table) => self.choose_flavour(table, &slots)?,
            Method::None => return self.passthrough(pod, &slots),
        };
        raise_to(&mut slots, target);
        let (total, _) = totals(&slots);
        let size = PodSize {
            cpu_millis: self.fit(total.cpu, "CPU")?,
            memory_bytes: self.fit(total.memory, "memory")?,
        };
        let containers = self.sizes(&slots)?;
        Ok(Normalized {
            pod: rewrite(pod, &containers),
            size: Some(size),
            containers,
        })
    }

    /// `none`: the pod as written, with its effective values for the caller's bookkeeping.
    fn passthrough(&self, pod: &Pod, slots: &[Slot]) -> Result<Normalized, NormalizationError> {
        Ok(Normalized {
            pod: pod.clone(),
            size: None,
            containers: self.sizes(slots)?,
        })
    }

    /// Seed 001's five rules, in order; returns the pod-level target.
    fn apply_rules(&self, r: &Rules, slots: &mut [Slot]) -> Result<Total, NormalizationError> {
        if slots.iter().all(|s| s.best_effort) {
            return Err(self.fail(format!(
                "no container asks for CPU or memory; the rule \"{NEEDS_CPU_RULE}\" refuses the pod"
            )));
        }
        // Rule 1: per container, CPU up to the step, memory up to the floor.
        for s in slots.iter_mut().filter(|s| !s.best_effort) {
            if let Some(step) = r.cpu_step {
                s.cpu = ceil_to(s.cpu, i128::from(step));
            }
            if let Some(min) = r.container_min_memory {
                s.memory = s.memory.max(i128::from(min));
            }
        }
        let (mut t, _) = totals(slots);
        // Rule 2: pod memory up to its step.
        if let Some(step) = r.pod_memory_step {
            t.memory = ceil_to(t.memory, i128::from(step));
        }
        // Rule 3: memory per core within bounds, raising whichever side is short.
        self.apply_ratio(r, &mut t)?;
        // Rule 4: caps.
        self.check_caps(r, t)?;
        if t.cpu <= 0 {
            return Err(self.fail(format!(
                "after normalisation the pod has no CPU; the rule \"{NEEDS_CPU_RULE}\" refuses it"
            )));
        }
        // Rule 5 (increments to the first non-BestEffort container) is `raise_to`.
        Ok(t)
    }

    fn apply_ratio(&self, r: &Rules, t: &mut Total) -> Result<(), NormalizationError> {
        let cpu_step = r.cpu_step.map_or(1, i128::from);
        let mem_step = r.pod_memory_step.map_or(1, i128::from);
        let too_large = || self.fail("the pod's resources are too large to size");
        let mul = |a: i128, b: i128| a.checked_mul(b).ok_or_else(too_large);
        for _ in 0..RATIO_PASSES {
            // Compare memory/cpu with the bound without dividing: memory*1000 vs bound*millicores.
            // CPU 0 with memory > 0 thus counts as above any maximum.
            let scaled_memory = mul(t.memory, 1000)?;
            if let Some(min) = r.memory_per_cpu_min {
                let floor = mul(i128::from(min), t.cpu)?;
                if scaled_memory < floor {
                    t.memory = ceil_to(ceil_div(floor, 1000), mem_step).max(t.memory);
                    continue;
                }
            }
            if let Some(max) = r.memory_per_cpu_max {
                let ceiling = mul(i128::from(max), t.cpu)?;
                if scaled_memory > ceiling {
                    let cpu = ceil_to(ceil_div(scaled_memory, i128::from(max)), cpu_step);
                    t.cpu = cpu.max(t.cpu);
                    continue;
                }
            }
            return Ok(());
        }
        Err(self.fail(format!(
            "the rule \"{}\" cannot be met with CPU steps of {} core and memory steps of {} GiB",
            ratio_rule(r),
            cores(cpu_step),
            gib(mem_step)
        )))
    }

    fn check_caps(&self, r: &Rules, t: Total) -> Result<(), NormalizationError> {
        let cpu_over = r.max_cpu.filter(|m| t.cpu > i128::from(*m));
        let mem_over = r.max_memory.filter(|m| t.memory > i128::from(*m));
        let (needs, allowed) = match (cpu_over, mem_over) {
            (None, None) => return Ok(()),
            (Some(c), None) => (format!("{} CPU", cores(t.cpu)), format!("{} CPU", cores(c))),
            (None, Some(m)) => (
                format!("{} GiB of memory", gib(t.memory)),
                format!("{} GiB", gib(m)),
            ),
            (Some(c), Some(m)) => (
                format!("{} CPU and {} GiB of memory", cores(t.cpu), gib(t.memory)),
                format!("{} CPU and {} GiB", cores(c), gib(m)),
            ),
        };
        Err(self.fail(format!(
            "after normalisation the pod needs {needs}, more than the {allowed} the rule \"{}\" allows",
            max_rule(r)
        )))
    }

    /// The smallest flavour, in (cpu, memory) order, that holds the pod's need.
    fn choose_flavour(
        &self,
        table: &[Flavour],
        slots: &[Slot],
    ) -> Result<Total, NormalizationError> {
        let (need, _) = totals(slots);
        if need.cpu == 0 && need.memory == 0 {
            return Err(self.fail(
                "the pod asks for no CPU and no memory, and the profile has no defaultResources to size it with",
            ));
        }
        let mut sorted = table.to_vec();
        sorted.sort();
        if let Some(f) = sorted
            .iter()
            .find(|f| i128::from(f.cpu) >= need.cpu && i128::from(f.memory) >= need.memory)
        {
            return Ok(Total {
                cpu: i128::from(f.cpu),
                memory: i128::from(f.memory),
            });
        }
        let largest = match sorted.last() {
            Some(f) => format!("{} CPU / {} GiB", cores(f.cpu), gib(f.memory)),
            None => "none (the table is empty)".to_string(),
        };
        Err(self.fail(format!(
            "the pod needs {} CPU and {} GiB of memory and no flavour holds it; the largest flavour is {largest}",
            cores(need.cpu),
            gib(need.memory)
        )))
    }

    fn sizes(&self, slots: &[Slot]) -> Result<Vec<ContainerSize>, NormalizationError> {
        slots
            .iter()
            .map(|s| {
                Ok(ContainerSize {
                    name: s.name.clone(),
                    init: s.init,
                    cpu_millis: self.fit(s.cpu, "CPU")?,
                    memory_bytes: self.fit(s.memory, "memory")?,
                    best_effort: s.best_effort,
                })
            })
            .collect()
    }

    fn fit(&self, v: i128, what: &str) -> Result<i64, NormalizationError> {
        i64::try_from(v).map_err(|_| self.fail(format!("the pod's {what} is too large to size")))
    }

    fn fail(&self, message: impl Into<String>) -> NormalizationError {
        NormalizationError {
            profile: self.name.clone(),
            message: message.into(),
        }
    }
}

fn ratio_rule(r: &Rules) -> String {
    match (r.memory_per_cpu_min, r.memory_per_cpu_max) {
        (Some(lo), Some(hi)) => {
            format!("pod memory must be {} to {} GiB per core", gib(lo), gib(hi))
        }
        (Some(lo), None) => format!("pod memory must be at least {} GiB per core", gib(lo)),
        (None, Some(hi)) => format!("pod memory must be at most {} GiB per core", gib(hi)),
        (None, None) => "pod memory per core is unbounded".to_string(),
    }
}

fn max_rule(r: &Rules) -> String {
    let core_word = |m: i64| if m == 1000 { "core" } else { "cores" };
    match (r.max_cpu, r.max_memory) {
        (Some(c), Some(m)) => format!(
            "a pod may not exceed {} {} or {} GiB",
            cores(c),
            core_word(c),
            gib(m)
        ),
        (Some(c), None) => format!("a pod may not exceed {} {}", cores(c), core_word(c)),
        (None, Some(m)) => format!("a pod may not exceed {} GiB", gib(m)),
        (None, None) => "a pod has no size limit".to_string(),
    }
}

/// Kubernetes' effective request (`resourcehelper.PodRequests`, without overhead): returns the
/// pod's totals and the app-phase sum (app containers plus sidecars).
fn totals(slots: &[Slot]) -> (Total, Total) {
    let mut sidecars = Total::default();
    let mut init_peak = Total::default();
    let mut apps = Total::default();
    for s in slots {
        if !s.init {
            apps.cpu += s.cpu;
            apps.memory += s.memory;
        } else if s.sidecar {
            // A sidecar keeps running, so it adds to every later init step and to the app phase.
            sidecars.cpu += s.cpu;
            sidecars.memory += s.memory;
            init_peak.cpu = init_peak.cpu.max(sidecars.cpu);
            init_peak.memory = init_peak.memory.max(sidecars.memory);
        } else {
            init_peak.cpu = init_peak.cpu.max(s.cpu + sidecars.cpu);
            init_peak.memory = init_peak.memory.max(s.memory + sidecars.memory);
        }
    }
    let app_phase = Total {
        cpu: apps.cpu + sidecars.cpu,
        memory: apps.memory + sidecars.memory,
    };
    let total = Total {
        cpu: app_phase.cpu.max(init_peak.cpu),
        memory: app_phase.memory.max(init_peak.memory),
    };
    (total, app_phase)
}

/// Rule 5 / the flavour difference: lift the pod's totals to `target` through one app container.
/// The increment is measured against the app phase, not the total, because when an init
/// container dominates only raising the app phase up to the target moves the pod's request.
fn raise_to(slots: &mut [Slot], target: Total) {
    let (total, app_phase) = totals(slots);
    let Some(i) = slots
        .iter()
        .position(|s| !s.init && !s.best_effort)
        .or_else(|| slots.iter().position(|s| !s.init))
    else {
        return;
    };
    let slot = &mut slots[i];
    if target.cpu > total.cpu {
        slot.cpu += target.cpu - app_phase.cpu;
        slot.best_effort = false;
    }
    if target.memory > total.memory {
        slot.memory += target.memory - app_phase.memory;
        slot.best_effort = false;
    }
}

fn read(pod: &Pod) -> Result<Vec<Slot>, String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let inits = spec.init_containers.iter().flatten().map(|c| (true, c));
    let apps = spec.containers.iter().map(|c| (false, c));
    inits
        .chain(apps)
        .map(|(init, c)| {
            let cpu = effective(c, "cpu", units::millis_of)?;
            let memory = effective(c, "memory", units::bytes_of)?;
            Ok(Slot {
                name: c.name.clone(),
                init,
                sidecar: init && c.restart_policy.as_deref() == Some("Always"),
                cpu: i128::from(cpu),
                memory: i128::from(memory),
                best_effort: cpu == 0 && memory == 0,
            })
        })
        .collect()
}

/// Limit if set, else request, else 0. Both are parsed so a malformed value is reported even
/// where the other one wins.
fn effective(
    c: &Container,
    key: &str,
    parse: fn(&str) -> Result<i64, String>,
) -> Result<i64, String> {
    let res = c.resources.as_ref();
    let value = |map: Option<&BTreeMap<String, Quantity>>, which: &str| match map
        .and_then(|m| m.get(key))
    {
        None => Ok(None),
        Some(q) => {
            let v =
                parse(&q.0).map_err(|e| format!("container {:?} {which}.{key}: {e}", c.name))?;
            if v < 0 {
                return Err(format!(
                    "container {:?} {which}.{key} is negative ({})",
                    c.name, q.0
                ));
            }
            Ok(Some(v))
        }
    };
    let limit = value(res.and_then(|r| r.limits.as_ref()), "limits")?;
    let request = value(res.and_then(|r| r.requests.as_ref()), "requests")?;
    Ok(limit.or(request).unwrap_or(0))
}

/// Writes requests = limits = the normalised CPU and memory into every non-BestEffort container,
/// keeping other resources (ephemeral-storage, extended resources) as they were. A zero value is
/// removed rather than written, since a zero limit means "unlimited" to a kubelet.
fn rewrite(pod: &Pod, sizes: &[ContainerSize]) -> Pod {
    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_mut() else {
        return pod;
    };
    let inits = spec.init_containers.iter_mut().flatten();
    for (c, s) in inits.chain(spec.containers.iter_mut()).zip(sizes) {
        if s.best_effort {
            continue;
        }
        let res = c.resources.get_or_insert_with(Default::default);
        for map in [&mut res.requests, &mut res.limits] {
            let m = map.get_or_insert_with(BTreeMap::new);
            let pairs = [
                ("cpu", s.cpu_millis, units::cpu_quantity(s.cpu_millis)),
                (
                    "memory",
                    s.memory_bytes,
                    units::memory_quantity(s.memory_bytes),
                ),
            ];
            for (key, v, q) in pairs {
                if v > 0 {
                    m.insert(key.to_string(), q);
                } else {
                    m.remove(key);
                }
            }
            if m.is_empty() {
                *map = None;
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use serde_json::{Value, json};

    use super::*;
    use crate::sizing::test_support::{ctr, pod, pod_from, req};
    use crate::sizing::units::{GIB, MIB, bytes_of, millis_of};

    fn profile(name: &str) -> SizingProfile {
        SizingProfile::builtin(name).unwrap()
    }

    fn sidecar(mut c: Value) -> Value {
        c["restartPolicy"] = json!("Always");
        c
    }

    fn all_containers(p: &Pod) -> Vec<&Container> {
        let spec = p.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .collect()
    }

    /// What every normalised pod must satisfy, whatever the profile: requests == limits == the
    /// reported values on non-BestEffort containers, other resources and BestEffort containers
    /// untouched, and the pod's own effective request (recomputed from the rewritten spec) equal
    /// to the reported size.
    fn check_invariants(n: &Normalized, original: &Pod) {
        let before = all_containers(original);
        let after = all_containers(&n.pod);
        assert_eq!(after.len(), n.containers.len());
        for ((b, a), s) in before.iter().zip(&after).zip(&n.containers) {
            assert_eq!(a.name, s.name);
            let empty = ResourceRequirements::default();
            let ar = a.resources.as_ref().unwrap_or(&empty);
            let br = b.resources.as_ref().unwrap_or(&empty);
            if s.best_effort {
                assert_eq!(ar, br, "BestEffort container {} was changed", s.name);
                continue;
            }
            for (which, map) in [("requests", &ar.requests), ("limits", &ar.limits)] {
                let map = map.clone().unwrap_or_default();
                let cpu = map
                    .get("cpu")
                    .map(|q| millis_of(&q.0).unwrap())
                    .unwrap_or(0);
                let mem = map
                    .get("memory")
                    .map(|q| bytes_of(&q.0).unwrap())
                    .unwrap_or(0);
                assert_eq!(cpu, s.cpu_millis, "{} {which}.cpu", s.name);
                assert_eq!(mem, s.memory_bytes, "{} {which}.memory", s.name);
            }
            for (bm, am) in [(&br.requests, &ar.requests), (&br.limits, &ar.limits)] {
                for (k, v) in bm.iter().flatten() {
                    if k != "cpu" && k != "memory" {
                        assert_eq!(
                            am.as_ref().and_then(|m| m.get(k)),
                            Some(v),
                            "{} lost {k}",
                            s.name
                        );
                    }
                }
            }
        }
        if let Some(size) = n.size {
            let (total, _) = totals(&read(&n.pod).unwrap());
            assert_eq!(
                (total.cpu, total.memory),
                (i128::from(size.cpu_millis), i128::from(size.memory_bytes)),
                "the rewritten pod's effective request differs from its size"
            );
        }
    }

    struct Case {
        what: &'static str,
        inits: Vec<Value>,
        apps: Vec<Value>,
        /// Expected `${cpu}_${mem}`.
        size: &'static str,
        /// Expected (name, cpu, memory) per container, inits first; "" = 0.
        containers: Vec<(&'static str, &'static str, &'static str)>,
    }

    fn run(profile_name: &str, cases: Vec<Case>) {
        let p = profile(profile_name);
        for c in cases {
            let original = pod(c.inits, c.apps);
            let n = match p.normalize(&original) {
                Ok(n) => n,
                Err(e) => panic!("{profile_name}: {}: {e}", c.what),
            };
            let size = n.size.map(|s| s.to_string());
            assert_eq!(size.as_deref(), Some(c.size), "{profile_name}: {}", c.what);
            let q = |s: &str, f: fn(&str) -> Result<i64, String>| {
                if s.is_empty() { 0 } else { f(s).unwrap() }
            };
            let got: Vec<(String, i64, i64)> = n
                .containers
                .iter()
                .map(|s| (s.name.clone(), s.cpu_millis, s.memory_bytes))
                .collect();
            let want: Vec<(String, i64, i64)> = c
                .containers
                .iter()
                .map(|(name, cpu, mem)| (name.to_string(), q(cpu, millis_of), q(mem, bytes_of)))
                .collect();
            assert_eq!(got, want, "{profile_name}: {}", c.what);
            check_invariants(&n, &original);
        }
    }

    fn refuse(profile_name: &str, cases: Vec<(&str, Pod, &str)>) {
        let p = profile(profile_name);
        for (what, pod, want) in cases {
            match p.normalize(&pod) {
                Ok(n) => panic!("{profile_name}: {what}: accepted as {:?}", n.size),
                Err(e) => {
                    assert_eq!(e.profile, profile_name);
                    let msg = e.to_string();
                    assert!(
                        msg.contains(want),
                        "{profile_name}: {what}: {msg:?} lacks {want:?}"
                    );
                }
            }
        }
    }

    fn case(
        what: &'static str,
        inits: Vec<Value>,
        apps: Vec<Value>,
        size: &'static str,
        containers: Vec<(&'static str, &'static str, &'static str)>,
    ) -> Case {
        Case {
            what,
            inits,
            apps,
            size,
            containers,
        }
    }

    const NO_RES: &[(&str, &str)] = &[];

    #[test]
    fn cci_rule_1_rounds_each_container() {
        run(
            "cci",
            vec![
                case(
                    "100m/100Mi: CPU to 0.25, memory floor then pod GiB",
                    vec![],
                    vec![req("app", "100m", "100Mi")],
                    "0.25_1",
                    vec![("app", "250m", "1Gi")],
                ),
                case(
                    "CPU rounded per container, not on the sum (0.4 would give 0.5)",
                    vec![],
                    vec![req("a", "300m", "1Gi"), req("b", "100m", "1Gi")],
                    "0.75_2",
                    vec![("a", "500m", "1Gi"), ("b", "250m", "1Gi")],
                ),
                case(
                    "0.2Gi memory floor per container pushes the pod over 1Gi",
                    vec![],
                    vec![req("a", "250m", "900Mi"), req("b", "250m", "10Mi")],
                    "0.5_2",
                    vec![("a", "250m", "1932735283"), ("b", "250m", "214748365")],
                ),
                case(
                    "exact multiples untouched",
                    vec![],
                    vec![req("app", "750m", "2Gi")],
                    "0.75_2",
                    vec![("app", "750m", "2Gi")],
                ),
                case(
                    "init containers are rounded too",
                    vec![req("init", "1100m", "1Gi")],
                    vec![req("app", "250m", "1Gi")],
                    "1.25_3",
                    vec![("init", "1250m", "1Gi"), ("app", "250m", "3Gi")],
                ),
            ],
        );
    }

    #[test]
    fn cci_rule_2_rounds_pod_memory_to_whole_gib() {
        run(
            "cci",
            vec![
                case(
                    "seed 001's Deployment",
                    vec![],
                    vec![req("app", "500m", "1024Mi")],
                    "0.5_1",
                    vec![("app", "500m", "1Gi")],
                ),
                case(
                    "2.5Gi becomes 3Gi",
                    vec![],
                    vec![req("app", "1", "2.5Gi")],
                    "1_3",
                    vec![("app", "1", "3Gi")],
                ),
                case(
                    "sum of containers is rounded, not each",
                    vec![],
                    vec![req("a", "1", "1.5Gi"), req("b", "1", "1.5Gi")],
                    "2_4",
                    vec![("a", "1", "2.5Gi"), ("b", "1", "1.5Gi")],
                ),
            ],
        );
    }

    #[test]
    fn cci_rule_3_keeps_memory_per_core_between_2_and_8() {
        run(
            "cci",
            vec![
                case(
                    "ratio 0.5 raises memory to 2 GiB per core",
                    vec![],
                    vec![req("app", "2", "1Gi")],
                    "2_4",
                    vec![("app", "2", "4Gi")],
                ),
                case(
                    "ratio 16 raises CPU to memory/8",
                    vec![],
                    vec![req("app", "250m", "4Gi")],
                    "0.5_4",
                    vec![("app", "500m", "4Gi")],
                ),
                case(
                    "raised CPU is a multiple of 0.25",
                    vec![],
                    vec![req("app", "1", "9Gi")],
                    "1.25_9",
                    vec![("app", "1250m", "9Gi")],
                ),
                case(
                    "memory only: CPU 0 counts as ratio > 8",
                    vec![],
                    vec![req("app", "", "1Gi")],
                    "0.25_1",
                    vec![("app", "250m", "1Gi")],
                ),
                case(
                    "ratio exactly 2 and exactly 8 are fine",
                    vec![],
                    vec![req("a", "1", "2Gi"), req("b", "", "")],
                    "1_2",
                    vec![("a", "1", "2Gi"), ("b", "", "")],
                ),
                case(
                    "ratio exactly 8",
                    vec![],
                    vec![req("app", "1", "8Gi")],
                    "1_8",
                    vec![("app", "1", "8Gi")],
                ),
                case(
                    "raised memory is a whole GiB",
                    vec![],
                    vec![req("app", "1250m", "1Gi")],
                    "1.25_3",
                    vec![("app", "1250m", "3Gi")],
                ),
            ],
        );
    }

    #[test]
    fn cci_rule_4_caps_at_32_cores_and_256_gib() {
        run(
            "cci",
            vec![case(
                "exactly at the caps",
                vec![],
                vec![req("app", "32", "256Gi")],
                "32_256",
                vec![("app", "32", "256Gi")],
            )],
        );
        let p = profile("cci");
        let e = p
            .normalize(&pod(vec![], vec![req("app", "40", "80Gi")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"profile cci: after normalisation the pod needs 40 CPU, more than the 32 CPU the rule "a pod may not exceed 32 cores or 256 GiB" allows"#
        );
        refuse(
            "cci",
            vec![
                (
                    "33 CPU",
                    pod(vec![], vec![req("app", "33", "66Gi")]),
                    "needs 33 CPU, more than the 32 CPU",
                ),
                (
                    "32.1 CPU rounds to 32.25",
                    pod(vec![], vec![req("app", "32100m", "64Gi")]),
                    "needs 32.25 CPU",
                ),
                (
                    "300Gi needs 37.5 cores",
                    pod(vec![], vec![req("app", "32", "300Gi")]),
                    "needs 37.5 CPU and 300 GiB of memory, more than the 32 CPU and 256 GiB the rule \"a pod may not exceed 32 cores or 256 GiB\"",
                ),
                (
                    "an init container over the cap",
                    pod(
                        vec![req("init", "33", "66Gi")],
                        vec![req("app", "1", "2Gi")],
                    ),
                    "33 CPU",
                ),
            ],
        );
    }

    #[test]
    fn cci_rule_5_increments_go_to_the_first_non_best_effort_app_container() {
        run(
            "cci",
            vec![
                case(
                    "memory increment to a, not the BestEffort container before it, nor b",
                    vec![],
                    vec![
                        req("be", "", ""),
                        req("a", "500m", "256Mi"),
                        req("b", "500m", "256Mi"),
                    ],
                    "1_2",
                    vec![
                        ("be", "", ""),
                        ("a", "500m", "1792Mi"),
                        ("b", "500m", "256Mi"),
                    ],
                ),
                case(
                    "CPU increment to a",
                    vec![],
                    vec![req("a", "250m", "3Gi"), req("b", "250m", "3Gi")],
                    "0.75_6",
                    vec![("a", "500m", "3Gi"), ("b", "250m", "3Gi")],
                ),
                case(
                    "increments never land on an init container",
                    vec![req("init", "250m", "256Mi")],
                    vec![req("app", "250m", "256Mi")],
                    "0.25_1",
                    vec![("init", "250m", "256Mi"), ("app", "250m", "1Gi")],
                ),
            ],
        );
        // The rewritten quantities are the clean forms: 1.5 CPU / 2Gi -> 3Gi, +1Gi on a.
        let n = profile("cci")
            .normalize(&pod(
                vec![],
                vec![req("a", "500m", "256Mi"), req("b", "1", "1792Mi")],
            ))
            .unwrap();
        assert_eq!(n.size.map(|s| s.to_string()).as_deref(), Some("1.5_3"));
        let spec = n.pod.spec.unwrap();
        let res = |i: usize| spec.containers[i].resources.clone().unwrap();
        let a = res(0);
        assert_eq!(a.limits.as_ref().unwrap()["cpu"].0, "500m");
        assert_eq!(a.limits.as_ref().unwrap()["memory"].0, "1280Mi");
        assert_eq!(a.requests, a.limits);
        assert_eq!(res(1).requests.unwrap()["cpu"].0, "1");
    }

    #[test]
    fn cci_effective_values_and_init_containers() {
        run(
            "cci",
            vec![
                case(
                    "requests differ from limits: limits win",
                    vec![],
                    vec![ctr(
                        "app",
                        &[("cpu", "250m"), ("memory", "512Mi")],
                        &[("cpu", "1"), ("memory", "2Gi")],
                    )],
                    "1_2",
                    vec![("app", "1", "2Gi")],
                ),
                case(
                    "limit on one resource, request on the other",
                    vec![],
                    vec![ctr("app", &[("cpu", "2")], &[("memory", "4Gi")])],
                    "2_4",
                    vec![("app", "2", "4Gi")],
                ),
                case(
                    "init container larger than the apps sets the size; apps untouched",
                    vec![req("init", "2", "4Gi")],
                    vec![req("app", "500m", "1Gi")],
                    "2_4",
                    vec![("init", "2", "4Gi"), ("app", "500m", "1Gi")],
                ),
                case(
                    "init dominates and a rule raises: the app container is lifted to the target",
                    vec![req("init", "1", "1Gi")],
                    vec![req("app", "250m", "256Mi")],
                    "1_2",
                    vec![("init", "1", "1Gi"), ("app", "250m", "2Gi")],
                ),
                case(
                    "sidecars run beside the apps and count in their sum",
                    vec![sidecar(req("log", "250m", "1Gi"))],
                    vec![req("app", "250m", "1Gi")],
                    "0.5_2",
                    vec![("log", "250m", "1Gi"), ("app", "250m", "1Gi")],
                ),
                case(
                    "only init containers ask: the first app container takes the increment",
                    vec![req("init", "1", "1Gi")],
                    vec![req("app", "", "")],
                    "1_2",
                    vec![("init", "1", "1Gi"), ("app", "", "2Gi")],
                ),
                case(
                    "other resources are kept",
                    vec![],
                    vec![ctr(
                        "app",
                        &[
                            ("cpu", "100m"),
                            ("memory", "100Mi"),
                            ("ephemeral-storage", "1Gi"),
                        ],
                        &[("nvidia.com/gpu", "1")],
                    )],
                    "0.25_1",
                    vec![("app", "250m", "1Gi")],
                ),
                case(
                    "zero quantities count as unset (BestEffort)",
                    vec![],
                    vec![req("a", "1", "2Gi"), req("zero", "0", "0")],
                    "1_2",
                    vec![("a", "1", "2Gi"), ("zero", "", "")],
                ),
            ],
        );
        // The lifted BestEffort app container gets memory only; no zero CPU is written.
        let n = profile("cci")
            .normalize(&pod(
                vec![req("init", "1", "1Gi")],
                vec![req("app", "", "")],
            ))
            .unwrap();
        let app = &n.pod.spec.unwrap().containers[0];
        let limits = app.resources.as_ref().unwrap().limits.clone().unwrap();
        assert!(!limits.contains_key("cpu"), "{limits:?}");
        assert!(!n.containers[1].best_effort);
    }

    #[test]
    fn cci_refusals() {
        refuse(
            "cci",
            vec![
                (
                    "all BestEffort",
                    pod(vec![], vec![req("a", "", ""), req("b", "", "")]),
                    "the rule \"a pod needs CPU in at least one container\"",
                ),
                (
                    "unparseable cpu",
                    pod(vec![], vec![req("app", "lots", "1Gi")]),
                    "container \"app\" requests.cpu: invalid quantity \"lots\"",
                ),
                (
                    "unparseable limit",
                    pod(vec![], vec![ctr("app", NO_RES, &[("memory", "1Qi")])]),
                    "limits.memory",
                ),
                (
                    "malformed request under a valid limit",
                    pod(vec![], vec![ctr("app", &[("cpu", "x")], &[("cpu", "1")])]),
                    "requests.cpu",
                ),
                (
                    "negative",
                    pod(vec![], vec![req("app", "-1", "1Gi")]),
                    "negative",
                ),
                (
                    "huge",
                    pod(vec![], vec![req("app", "9e18", "1Gi")]),
                    "too large",
                ),
                (
                    "no containers",
                    pod(vec![req("init", "1", "1Gi")], vec![]),
                    "no containers",
                ),
                (
                    "no spec",
                    pod_from(json!({"metadata": {"name": "p"}})),
                    "no containers",
                ),
            ],
        );
        // Many huge containers: sums beyond i64 are refused, not wrapped.
        let big: Vec<Value> = (0..4)
            .map(|i| req(&format!("c{i}"), "9e15", "7Ei"))
            .collect();
        let uncapped = SizingProfile::from_yaml("name: r\nmethod: rules\ncpuStep: 1m\n").unwrap();
        let e = uncapped.normalize(&pod(vec![], big.clone())).unwrap_err();
        assert!(e.message.contains("too large"), "{e}");
        assert!(profile("cci").normalize(&pod(vec![], big.clone())).is_err());
        assert!(
            profile("cube")
                .normalize(&pod(vec![], big.clone()))
                .is_err()
        );
        // Each container fits, so the passthrough still reports them.
        assert!(profile("none").normalize(&pod(vec![], big)).is_ok());
    }

    #[test]
    fn cube_flavour_boundaries() {
        run(
            "cube",
            vec![
                case(
                    "exactly 512Mi at 0.5",
                    vec![],
                    vec![req("app", "500m", "512Mi")],
                    "0.5_0.5",
                    vec![("app", "500m", "512Mi")],
                ),
                case(
                    "513Mi at 0.5",
                    vec![],
                    vec![req("app", "500m", "513Mi")],
                    "0.5_1",
                    vec![("app", "500m", "1Gi")],
                ),
                case(
                    "2Gi + 1 byte at 0.5 moves to the 1-core row",
                    vec![],
                    vec![req("app", "500m", "2147483649")],
                    "1_4",
                    vec![("app", "1", "4Gi")],
                ),
                case(
                    "tiny pod takes the smallest flavour",
                    vec![],
                    vec![req("app", "100m", "100Mi")],
                    "0.5_0.5",
                    vec![("app", "500m", "512Mi")],
                ),
                case(
                    "CPU only",
                    vec![],
                    vec![req("app", "1", "")],
                    "1_1",
                    vec![("app", "1", "1Gi")],
                ),
                case(
                    "4Gi + 1 at 1 core",
                    vec![],
                    vec![req("app", "1", "4294967297")],
                    "2_8",
                    vec![("app", "2", "8Gi")],
                ),
                case(
                    "largest flavour exactly",
                    vec![],
                    vec![req("app", "8", "16Gi")],
                    "8_16",
                    vec![("app", "8", "16Gi")],
                ),
                case(
                    "empty pod gets the default 500m/1Gi on the first app container",
                    vec![],
                    vec![req("a", "", ""), req("b", "", "")],
                    "0.5_1",
                    vec![("a", "500m", "1Gi"), ("b", "", "")],
                ),
                case(
                    "difference to the first non-BestEffort app container",
                    vec![],
                    vec![
                        req("be", "", ""),
                        req("a", "300m", "300Mi"),
                        req("b", "300m", "300Mi"),
                    ],
                    "1_1",
                    vec![
                        ("be", "", ""),
                        ("a", "700m", "724Mi"),
                        ("b", "300m", "300Mi"),
                    ],
                ),
            ],
        );
        refuse(
            "cube",
            vec![
                (
                    "8 CPU 17Gi",
                    pod(vec![], vec![req("app", "8", "17Gi")]),
                    "the pod needs 8 CPU and 17 GiB of memory and no flavour holds it; the largest flavour is 8 CPU / 16 GiB",
                ),
                (
                    "8.001 CPU",
                    pod(vec![], vec![req("app", "8001m", "1Gi")]),
                    "largest flavour is 8 CPU / 16 GiB",
                ),
            ],
        );
        let cube = profile("cube");
        assert_eq!(cube.max_pods(), Some(200));
        assert_eq!(cube.max_config_volume_bytes(), Some(30 * 1024 * 1024));
    }

    #[test]
    fn cci2_flavours() {
        run(
            "cci2",
            vec![
                case(
                    "0.25/2Gi",
                    vec![],
                    vec![req("app", "250m", "2Gi")],
                    "0.25_2",
                    vec![("app", "250m", "2Gi")],
                ),
                case(
                    "0.25/3Gi moves to 0.5",
                    vec![],
                    vec![req("app", "250m", "3Gi")],
                    "0.5_3",
                    vec![("app", "500m", "3Gi")],
                ),
                case(
                    "0.1 CPU, no memory",
                    vec![],
                    vec![req("app", "100m", "")],
                    "0.25_0.5",
                    vec![("app", "250m", "512Mi")],
                ),
                case(
                    "1/8.5Gi moves to 2 cores",
                    vec![],
                    vec![req("app", "1", "8.5Gi")],
                    "2_9",
                    vec![("app", "2", "9Gi")],
                ),
                case(
                    "8/60Gi on the 4Gi step",
                    vec![],
                    vec![req("app", "8", "60Gi")],
                    "8_60",
                    vec![("app", "8", "60Gi")],
                ),
                case(
                    "8/61Gi",
                    vec![],
                    vec![req("app", "8", "61Gi")],
                    "8_64",
                    vec![("app", "8", "64Gi")],
                ),
                case(
                    "16/100Gi on the 8Gi step",
                    vec![],
                    vec![req("app", "16", "100Gi")],
                    "16_104",
                    vec![("app", "16", "104Gi")],
                ),
                case(
                    "32/100Gi",
                    vec![],
                    vec![req("app", "32", "100Gi")],
                    "32_128",
                    vec![("app", "32", "128Gi")],
                ),
                case(
                    "33/10Gi",
                    vec![],
                    vec![req("app", "33", "10Gi")],
                    "48_96",
                    vec![("app", "48", "96Gi")],
                ),
                case(
                    "64/512Gi",
                    vec![],
                    vec![req("app", "64", "512Gi")],
                    "64_512",
                    vec![("app", "64", "512Gi")],
                ),
            ],
        );
        refuse(
            "cci2",
            vec![
                (
                    "64/513Gi",
                    pod(vec![], vec![req("app", "64", "513Gi")]),
                    "largest flavour is 64 CPU / 512 GiB",
                ),
                (
                    "65 CPU",
                    pod(vec![], vec![req("app", "65", "1Gi")]),
                    "no flavour holds it",
                ),
                (
                    "all BestEffort, no default",
                    pod(vec![], vec![req("app", "", "")]),
                    "no defaultResources",
                ),
            ],
        );
    }

    #[test]
    fn eci_flavours() {
        run(
            "eci",
            vec![
                case(
                    "7 CPU / 13Gi",
                    vec![],
                    vec![req("app", "7", "13Gi")],
                    "8_16",
                    vec![("app", "8", "16Gi")],
                ),
                case(
                    "default 2 vCPU / 4 GiB",
                    vec![],
                    vec![req("app", "", "")],
                    "2_4",
                    vec![("app", "2", "4Gi")],
                ),
                case(
                    "1/1Gi",
                    vec![],
                    vec![req("app", "1", "1Gi")],
                    "1_2",
                    vec![("app", "1", "2Gi")],
                ),
                case(
                    "0.5/3Gi",
                    vec![],
                    vec![req("app", "500m", "3Gi")],
                    "1_4",
                    vec![("app", "1", "4Gi")],
                ),
                case(
                    "2/500Mi",
                    vec![],
                    vec![req("app", "2", "500Mi")],
                    "2_1",
                    vec![("app", "2", "1Gi")],
                ),
                case(
                    "0.25/1Gi",
                    vec![],
                    vec![req("app", "250m", "1Gi")],
                    "0.25_1",
                    vec![("app", "250m", "1Gi")],
                ),
                case(
                    "52/100Gi",
                    vec![],
                    vec![req("app", "52", "100Gi")],
                    "52_192",
                    vec![("app", "52", "192Gi")],
                ),
                case(
                    "9/10Gi skips to 12",
                    vec![],
                    vec![req("app", "9", "10Gi")],
                    "12_12",
                    vec![("app", "12", "12Gi")],
                ),
            ],
        );
        refuse(
            "eci",
            vec![(
                "64/600Gi",
                pod(vec![], vec![req("app", "64", "600Gi")]),
                "largest flavour is 64 CPU / 512 GiB",
            )],
        );
    }

    #[test]
    fn none_passes_the_pod_through() {
        let original = pod(
            vec![req("init", "3", "")],
            vec![
                ctr(
                    "app",
                    &[("cpu", "250m"), ("memory", "1Gi")],
                    &[("cpu", "500m")],
                ),
                req("be", "", ""),
            ],
        );
        let n = SizingProfile::none().normalize(&original).unwrap();
        assert_eq!(n.size, None);
        assert_eq!(
            serde_json::to_value(&n.pod).unwrap(),
            serde_json::to_value(&original).unwrap()
        );
        let size = |name: &str, init, cpu, memory, best_effort| ContainerSize {
            name: name.to_string(),
            init,
            cpu_millis: cpu,
            memory_bytes: memory,
            best_effort,
        };
        assert_eq!(
            n.containers,
            vec![
                size("init", true, 3000, 0, false),
                size("app", false, 500, GIB, false),
                size("be", false, 0, 0, true),
            ]
        );
        let bare = pod_from(json!({"metadata": {"name": "p"}}));
        assert!(
            SizingProfile::none()
                .normalize(&bare)
                .unwrap()
                .containers
                .is_empty()
        );
        assert!(
            SizingProfile::none()
                .normalize(&pod(vec![], vec![req("app", "lots", "")]))
                .is_err()
        );
    }

    #[test]
    fn user_rule_profiles() {
        let capped =
            SizingProfile::from_yaml("name: capped\nmethod: rules\nmaxMemory: 4Gi\n").unwrap();
        let e = capped
            .normalize(&pod(vec![], vec![req("app", "1", "5Gi")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"profile capped: after normalisation the pod needs 5 GiB of memory, more than the 4 GiB the rule "a pod may not exceed 4 GiB" allows"#
        );
        // Without a ratio rule a memory-only pod stays without CPU, which the last rule refuses.
        let e = capped
            .normalize(&pod(vec![], vec![req("app", "", "1Gi")]))
            .unwrap_err();
        assert!(e.message.contains(NEEDS_CPU_RULE), "{e}");
        // Steps that never agree with an exact ratio are reported, not looped on.
        let stuck = SizingProfile::from_yaml(
            "name: stuck\nmethod: rules\ncpuStep: 1\npodMemoryStep: 1000Mi\nmemoryPerCpu: {min: 1Gi, max: 1Gi}\n",
        )
        .unwrap();
        let e = stuck
            .normalize(&pod(vec![], vec![req("app", "1", "1Gi")]))
            .unwrap_err();
        assert!(
            e.message.contains("pod memory must be 1 to 1 GiB per core"),
            "{e}"
        );
        // A rules profile with defaults sizes an empty pod.
        let defaulted = SizingProfile::from_yaml(
            "name: d\nmethod: rules\ncpuStep: 250m\ndefaultResources: {cpu: 100m, memory: 128Mi}\n",
        )
        .unwrap();
        let n = defaulted
            .normalize(&pod(vec![], vec![req("app", "", "")]))
            .unwrap();
        assert_eq!(n.size.map(|s| s.to_string()).as_deref(), Some("0.25_0.125"));
        assert_eq!(
            n.size,
            Some(PodSize {
                cpu_millis: 250,
                memory_bytes: 128 * MIB
            })
        );
    }

    #[test]
    fn pod_size_display() {
        let cases: &[(i64, i64, &str)] = &[
            (500, GIB, "0.5_1"),
            (1000, 8 * GIB, "1_8"),
            (250, 512 * MIB, "0.25_0.5"),
            (2000, GIB + GIB / 2, "2_1.5"),
            (32_000, 256 * GIB, "32_256"),
            (1250, 100 * MIB, "1.25_0.098"),
            (500, GIB + 1, "0.5_1.001"),
            (0, 0, "0_0"),
        ];
        for (cpu, mem, want) in cases {
            let s = PodSize {
                cpu_millis: *cpu,
                memory_bytes: *mem,
            };
            assert_eq!(s.to_string(), *want, "{cpu}m {mem}B");
        }
    }
}
