//! A small bounded map with per-entry expiry, for authentication and authorization decisions.
//!
//! Time is `tokio::time::Instant`, so tests drive expiry with a paused clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

pub struct TtlCache<K, V> {
    max_entries: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `key` if it has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some((expires, v)) if *expires > now => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keep `value` for `ttl`. When full, expired entries go first, then the one closest to
    /// expiry: the bound holds whatever the traffic (many distinct tokens, say).
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, (expires, _))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, (now + ttl, value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let c = TtlCache::new(10);
        c.insert("allowed", true, Duration::from_secs(300));
        c.insert("denied", false, Duration::from_secs(30));
        assert_eq!(c.get(&"allowed"), Some(true));
        assert_eq!(c.get(&"denied"), Some(false));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(c.get(&"denied"), Some(false));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get(&"denied"), None);
        assert_eq!(c.get(&"allowed"), Some(true));
        tokio::time::advance(Duration::from_secs(270)).await;
        assert_eq!(c.get(&"allowed"), None);
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stays_within_its_bound() {
        let c = TtlCache::new(3);
        for i in 0..3u64 {
            c.insert(i, i, Duration::from_secs(10 + i));
        }
        // Full of live entries: the one expiring soonest (0) makes room.
        c.insert(9, 9, Duration::from_secs(60));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&0), None);
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(c.get(&9), Some(9));
        // Expired entries go first.
        tokio::time::advance(Duration::from_secs(13)).await;
        c.insert(10, 10, Duration::from_secs(60));
        c.insert(11, 11, Duration::from_secs(60));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&9), Some(9));
        assert_eq!(c.get(&10), Some(10));
        assert_eq!(c.get(&11), Some(11));
        // Replacing a key never evicts another.
        c.insert(11, 12, Duration::from_secs(60));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&11), Some(12));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_is_not_cached() {
        let c = TtlCache::new(3);
        c.insert(1, 1, Duration::ZERO);
        assert!(c.is_empty());
    }
}
