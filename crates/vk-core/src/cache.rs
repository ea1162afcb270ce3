//! The one time-bounded cache of the tree: a bounded map whose entries expire after a per-entry
//! TTL, with at most one fetch in flight per key. The kubelet API keeps authentication and
//! authorization decisions in it; the resolver keeps objects it reads only at pod creation
//! (ServiceAccounts, the master Service).
//!
//! Invariants: an expired entry is never returned; a failed fetch is never cached; the map never
//! holds more than `max_entries` keys (expired entries make room first, then the one closest to
//! expiry, and a fetch still in flight only when nothing else can go). Time is
//! `tokio::time::Instant`, so tests drive expiry with a paused clock (a cache on `std` time, like
//! moka's, could only be tested by sleeping).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub struct TtlCache<K, V> {
    max_entries: usize,
    slots: Mutex<HashMap<K, Arc<Slot<V>>>>,
}

/// One key's value, or the fetch that will produce it.
struct Slot<V> {
    /// When the fetch began: a TTL counts from there, so a slow fetch does not stretch it.
    began: Instant,
    /// The value and when it expires, once known.
    cell: OnceCell<(V, Instant)>,
}

impl<V> Slot<V> {
    fn live(&self, now: Instant) -> bool {
        self.cell.get().is_none_or(|(_, expires)| *expires > now)
    }

    /// Eviction order: settled entries closest to expiry first; fetches in flight last.
    fn eviction_rank(&self) -> (bool, Instant) {
        match self.cell.get() {
            Some((_, expires)) => (false, *expires),
            None => (true, self.began),
        }
    }
}

/// A value from [`TtlCache::get_or_try_fetch`], and whether this call was spared the fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup<V> {
    pub value: V,
    /// `true` when the value was cached or fetched by a concurrent caller.
    pub cached: bool,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The value for `key` if it is known and has not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut slots = self.slots.lock();
        let slot = slots.get(key)?;
        match slot.cell.get() {
            Some((v, expires)) if *expires > now => Some(v.clone()),
            Some(_) => {
                slots.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keep `value` for `ttl` (a zero TTL keeps nothing). Replacing a key never evicts another.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let slot = Slot {
            began: now,
            cell: OnceCell::new_with(Some((value, now + ttl))),
        };
        let mut slots = self.slots.lock();
        self.make_room(&mut slots, &key, now);
        slots.insert(key, Arc::new(slot));
    }

    /// The value for `key`, fetching it when it is missing or expired. Concurrent callers for
    /// one key share one fetch; a failure is returned to the caller that fetched and cached for
    /// nobody (a waiting caller then fetches itself). `ttl` sets the lifetime from the value
    /// (e.g. shorter for a negative answer), counted from when the fetch began.
    pub async fn get_or_try_fetch<E, F, Fut>(
        &self,
        key: &K,
        ttl: impl FnOnce(&V) -> Duration,
        fetch: F,
    ) -> Result<Lookup<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = {
            let now = Instant::now();
            let mut slots = self.slots.lock();
            match slots.get(key) {
                Some(s) if s.live(now) => s.clone(),
                _ => {
                    self.make_room(&mut slots, key, now);
                    let s = Arc::new(Slot {
                        began: now,
                        cell: OnceCell::new(),
                    });
                    slots.insert(key.clone(), s.clone());
                    s
                }
            }
        };
        let mut fetched = false;
        let began = slot.began;
        let fetched_here = &mut fetched;
        let result = slot
            .cell
            .get_or_try_init(|| async move {
                *fetched_here = true;
                let value = fetch().await?;
                let expires = began + ttl(&value);
                Ok((value, expires))
            })
            .await;
        let forget = match &result {
            Ok((_, expires)) => *expires <= Instant::now(),
            Err(_) => true,
        };
        if forget {
            let mut slots = self.slots.lock();
            if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(key);
            }
        }
        result.map(|(value, _)| Lookup {
            value: value.clone(),
            cached: !fetched,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the bound before `key` is added: expired entries go, then (if still full) the one
    /// ranked first by [`Slot::eviction_rank`].
    fn make_room(&self, slots: &mut HashMap<K, Arc<Slot<V>>>, key: &K, now: Instant) {
        if slots.contains_key(key) || slots.len() < self.max_entries {
            return;
        }
        slots.retain(|_, s| s.live(now));
        if slots.len() < self.max_entries {
            return;
        }
        let first = slots
            .iter()
            .min_by_key(|(_, s)| s.eviction_rank())
            .map(|(k, _)| k.clone());
        if let Some(k) = first {
            slots.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
        let got = c
            .get_or_try_fetch(&2, |_| Duration::ZERO, || async { Ok::<_, ()>(2) })
            .await;
        assert_eq!(
            got,
            Ok(Lookup {
                value: 2,
                cached: false
            })
        );
        assert!(c.is_empty(), "a value fetched with a zero TTL is not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn fetches_once_per_ttl_and_never_caches_errors() {
        let cache: TtlCache<&str, u32> = TtlCache::new(16);
        let calls = AtomicUsize::new(0);
        let thirty = |_: &u32| Duration::from_secs(30);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            // A fetch that takes a while: the second caller must wait for it, not start its own.
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<u32, &str>(7)
        };
        let (a, b) = tokio::join!(
            cache.get_or_try_fetch(&"k", thirty, fetch),
            cache.get_or_try_fetch(&"k", thirty, fetch)
        );
        let (a, b) = (
            a.map(|l| (l.value, l.cached)),
            b.map(|l| (l.value, l.cached)),
        );
        assert_eq!((a, b), (Ok((7, false)), Ok((7, true))));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one fetch in flight per key"
        );
        // The TTL counts from when the fetch began (t=0), not from when it ended (t=1).
        tokio::time::advance(Duration::from_secs(28)).await;
        assert_eq!(cache.get(&"k"), Some(7));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&"k"), None);
        let again = cache.get_or_try_fetch(&"k", thirty, fetch).await;
        assert_eq!(again.map(|l| l.cached), Ok(false));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refetched after the TTL");
        let failing = || async { Err::<u32, &str>("boom") };
        assert_eq!(
            cache.get_or_try_fetch(&"e", thirty, failing).await,
            Err("boom")
        );
        assert_eq!(cache.get(&"e"), None, "errors are not cached");
        let after = cache.get_or_try_fetch(&"e", thirty, fetch).await;
        assert_eq!(after.map(|l| l.value), Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ttl_can_depend_on_the_value() {
        let c: TtlCache<&str, Option<&str>> = TtlCache::new(4);
        let ttl = |v: &Option<&str>| Duration::from_secs(if v.is_some() { 120 } else { 30 });
        let found = c
            .get_or_try_fetch(&"good", ttl, || async { Ok::<_, ()>(Some("alice")) })
            .await;
        assert_eq!(found.map(|l| l.value), Ok(Some("alice")));
        let missing = c
            .get_or_try_fetch(&"bad", ttl, || async { Ok::<_, ()>(None) })
            .await;
        assert_eq!(missing.map(|l| l.value), Ok(None));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(c.get(&"bad"), None);
        assert_eq!(c.get(&"good"), Some(Some("alice")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_in_flight_is_evicted_only_when_nothing_else_can_go() {
        let c: TtlCache<u32, u32> = TtlCache::new(2);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let pending = c.get_or_try_fetch(
            &1,
            |_| Duration::from_secs(60),
            || async {
                let _ = wait.await;
                Ok::<_, ()>(1)
            },
        );
        let mut pending = std::pin::pin!(pending);
        // Start the fetch (it parks on the channel) so its slot is in the map.
        assert!(futures::poll!(pending.as_mut()).is_pending());
        c.insert(2, 2, Duration::from_secs(60));
        c.insert(3, 3, Duration::from_secs(90));
        // Full (in flight 1, settled 2): the settled one went, the fetch in flight stayed.
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&3), Some(3));
        assert_eq!(c.len(), 2);
        let _ = release.send(());
        assert_eq!(pending.await.map(|l| l.value), Ok(1));
        assert_eq!(c.get(&1), Some(1));
    }
}
