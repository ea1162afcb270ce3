//! Unique, valid namespace names derived from test names.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest DNS label (RFC 1123), the limit for namespace names.
const MAX_LABEL: usize = 63;
/// Characters in the random suffix.
const SUFFIX_LEN: usize = 8;
/// Longest generated namespace name. Shorter than a DNS label's 63 so callers can derive names
/// from it (e.g. a node `vk-<namespace>` that also appears in 63-character label values).
pub(crate) const MAX_NAMESPACE: usize = 49;
/// Longest prefix taken from the test name: the rest of the name is `-` and the suffix.
pub(crate) const MAX_PREFIX: usize = MAX_NAMESPACE - 1 - SUFFIX_LEN;

/// The name of the running test, as libtest / nextest name the test's thread (`module::test_fn`),
/// or `"test"` when the thread carries no test name.
pub fn current_test_name() -> String {
    match std::thread::current().name() {
        Some(name) if !name.is_empty() && name != "main" => name.to_string(),
        _ => "test".to_string(),
    }
}

/// A fresh namespace name for `test_name`: the test's function name made into a DNS label
/// (lowercase alphanumerics and `-`, at most 40 characters), `-`, and 8 random base-36
/// characters. The result is always a valid DNS label of at most 49 characters, leaving room
/// for names derived from it to stay within 63.
pub fn namespace_name(test_name: &str) -> String {
    format!("{}-{}", name_prefix(test_name), unique_suffix())
}

/// The test-name part of [`namespace_name`]; also a valid label value.
pub(crate) fn name_prefix(test_name: &str) -> String {
    // `tests::foo::bar_baz` -> `bar_baz`: the function name is what identifies the test.
    let last = test_name.rsplit("::").find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(MAX_PREFIX);
    for c in last.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_PREFIX); // ASCII only, so any byte index is a char boundary
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "test".to_string()
    } else {
        out
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    // RandomState is seeded randomly per process (and varied per instance), so hashing the
    // pid, the time and a counter gives unpredictable, per-call distinct values without a
    // dependency on `rand`.
    let seed = (
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed),
    );
    let mut n = RandomState::new().hash_one(seed);
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(SUFFIX_LEN);
    for _ in 0..SUFFIX_LEN {
        s.push(char::from(ALPHABET[(n % 36) as usize]));
        n /= 36;
    }
    s
}

/// Whether `s` is a valid RFC 1123 DNS label (what namespace names must be).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_LABEL
        && b.iter().all(|c| ok(c) || *c == b'-')
        && b.first().is_some_and(ok)
        && b.last().is_some_and(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_valid_dns_labels() {
        let long = "a".repeat(200);
        let cases = [
            "harness::deployment_creates_pending_pods",
            "simple",
            "",
            "::",
            "tests::",
            "__leading_and_trailing__",
            "UPPER_Case::MiXeD",
            "ünïcödé_ñame",
            "123_starts_with_digit",
            "a--b__c",
            "x::y::z::deeply::nested::the_test",
            long.as_str(),
            "a_b_c_d_e_f_g_h_i_j_k_l_m_n_o_p_q_r_s_t_u_v_w_x_y_z_a_b_c_d_e_f",
        ];
        for case in cases {
            let name = namespace_name(case);
            assert!(
                is_dns_label(&name),
                "{case:?} -> {name:?} is not a DNS label"
            );
            assert!(name.len() <= MAX_NAMESPACE, "{name:?} too long");
        }
    }

    #[test]
    fn prefix_comes_from_the_test_function_name() {
        assert_eq!(name_prefix("harness::creates_pods"), "creates-pods");
        assert_eq!(name_prefix("Creates__Pods"), "creates-pods");
        assert_eq!(name_prefix("_x_"), "x");
        assert_eq!(name_prefix(""), "test");
        assert_eq!(name_prefix("tests::"), "tests");
        assert_eq!(name_prefix(&"b".repeat(100)).len(), MAX_PREFIX);
        // Truncation never leaves a trailing dash.
        let tricky = format!("{}_x", "a".repeat(MAX_PREFIX - 1));
        assert_eq!(name_prefix(&tricky), "a".repeat(MAX_PREFIX - 1));
        let name = namespace_name("harness::creates_pods");
        assert!(name.starts_with("creates-pods-"), "{name}");
        assert_eq!(name.len(), "creates-pods-".len() + SUFFIX_LEN);
    }

    #[test]
    fn names_are_unique() {
        let names: HashSet<String> = (0..10_000).map(|_| namespace_name("t")).collect();
        assert_eq!(names.len(), 10_000);
    }

    #[test]
    fn dns_label_check() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("a-1"));
        assert!(is_dns_label("1a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("a_b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
    }

    #[test]
    fn current_test_name_is_this_test() {
        // libtest names the thread running a test after the test (when it runs on its own
        // thread); the fallback keeps names valid otherwise.
        let name = current_test_name();
        assert!(
            name.ends_with("current_test_name_is_this_test") || name == "test",
            "{name}"
        );
    }
}
