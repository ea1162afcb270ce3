//! Property tests of normalisation: for any mix of requests and limits, every built-in profile
//! either refuses the pod with a reason or returns a pod whose requests equal its limits and
//! whose containers add up to the size it reports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use proptest::prelude::*;

use super::SizingProfile;
use crate::resolve::quantity::Amount;

#[derive(Debug, Clone)]
struct Res {
    cpu_req: Option<u32>,
    cpu_lim: Option<u32>,
    mem_req: Option<u32>,
    mem_lim: Option<u32>,
}

fn res() -> impl Strategy<Value = Res> {
    (
        proptest::option::of(0u32..40_000),
        proptest::option::of(0u32..40_000),
        proptest::option::of(0u32..300_000),
        proptest::option::of(0u32..300_000),
    )
        .prop_map(|(cpu_req, cpu_lim, mem_req, mem_lim)| Res {
            cpu_req,
            cpu_lim,
            mem_req,
            mem_lim,
        })
}

fn pod(containers: &[Res]) -> Pod {
    let list = |cpu: Option<u32>, mem: Option<u32>| {
        let mut m = BTreeMap::new();
        if let Some(c) = cpu {
            m.insert("cpu".to_string(), Quantity(format!("{c}m")));
        }
        if let Some(b) = mem {
            m.insert("memory".to_string(), Quantity(format!("{b}Mi")));
        }
        (!m.is_empty()).then_some(m)
    };
    Pod {
        spec: Some(PodSpec {
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, r)| Container {
                    name: format!("c{i}"),
                    resources: Some(ResourceRequirements {
                        requests: list(r.cpu_req, r.mem_req),
                        limits: list(r.cpu_lim, r.mem_lim),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn amount(m: Option<&BTreeMap<String, Quantity>>, key: &str) -> Option<Amount> {
    m.and_then(|m| m.get(key)).and_then(|q| Amount::of(q).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn normalised_pods_are_consistent(containers in proptest::collection::vec(res(), 1..4)) {
        let input = pod(&containers);
        for name in SizingProfile::builtin_names() {
            let Some(profile) = SizingProfile::builtin(name) else { continue };
            let Ok(n) = profile.normalize(&input) else { continue };
            let spec = n.pod.spec.clone().unwrap_or_default();
            let (mut cpu, mut mem) = (0i128, 0i128);
            for c in &spec.containers {
                let r = c.resources.clone().unwrap_or_default();
                if !profile.is_none() {
                    // Requests equal limits after normalisation.
                    prop_assert_eq!(amount(r.requests.as_ref(), "cpu"), amount(r.limits.as_ref(), "cpu"), "{} {}", name, c.name);
                    prop_assert_eq!(amount(r.requests.as_ref(), "memory"), amount(r.limits.as_ref(), "memory"), "{} {}", name, c.name);
                }
                cpu += amount(r.limits.as_ref(), "cpu").map(|a| a.milli_value()).unwrap_or(0);
                mem += amount(r.limits.as_ref(), "memory").map(|a| a.value()).unwrap_or(0);
            }
            if let Some(size) = n.size {
                // The reported size is what the containers add up to.
                prop_assert_eq!(i128::from(size.cpu_millis), cpu, "{} cpu", name);
                prop_assert_eq!(i128::from(size.memory_bytes), mem, "{} memory", name);
                prop_assert!(size.cpu_millis > 0 || size.memory_bytes > 0, "{} sized nothing", name);
                // Nothing is ever sized below what the user asked for.
                let asked_cpu: i128 = containers.iter().map(|r| i128::from(r.cpu_lim.or(r.cpu_req).unwrap_or(0))).sum();
                prop_assert!(cpu >= asked_cpu, "{} shrank cpu {} < {}", name, cpu, asked_cpu);
            }
            if *name == "cci" && let Some(size) = n.size {
                prop_assert_eq!(size.cpu_millis % 250, 0);
                prop_assert_eq!(size.memory_bytes % (1 << 30), 0);
                let gib = size.memory_bytes / (1 << 30);
                prop_assert!(gib * 1000 >= 2 * size.cpu_millis && gib * 1000 <= 8 * size.cpu_millis, "ratio {:?}", size);
                prop_assert!(size.cpu_millis <= 32_000 && gib <= 256);
            }
        }
    }
}
