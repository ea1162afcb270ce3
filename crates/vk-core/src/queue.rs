//! A keyed work queue: deduplicated keys, delayed re-adds and per-key capped exponential backoff.
//!
//! Semantics (those of a kubelet's pod workers, without client-go's global token bucket, which
//! throttles a burst of new pods to 10/s):
//! - a key is queued at most once; adding a queued key again is a no-op (or moves a delayed key
//!   earlier);
//! - a key handed to a worker is not handed to another until [`WorkQueue::done`]; adding it
//!   meanwhile marks it dirty and it runs again right after;
//! - [`WorkQueue::retry`] re-adds a key after its own backoff (base doubling up to a cap), which
//!   [`WorkQueue::forget`] resets. Retries never give up;
//! - [`WorkQueue::add_urgent`] queues a key ahead of every key added the ordinary way. The pod
//!   controller uses it for news from the backend about a pod it already runs: a status that
//!   only needs writing must not wait behind a burst of pods still to be created (a kubelet's
//!   status updates do not queue behind other pods' starts either).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Backoff bounds for [`WorkQueue::retry`].
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before attempt number `failures` (1 = first retry).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }
}

struct State<K> {
    ready: VecDeque<K>,
    /// Taken before `ready`. A key may sit in both lanes (moved ahead without being searched
    /// for in `ready`): only the first copy taken while the key is in `queued` counts.
    urgent: VecDeque<K>,
    /// Keys in `ready` or `delayed`.
    queued: HashSet<K>,
    /// Keys waiting for a deadline, with the deadline (one per key, the earliest asked for).
    delayed: HashMap<K, (Instant, u64)>,
    timeline: BTreeSet<(Instant, u64)>,
    by_seq: HashMap<u64, K>,
    seq: u64,
    processing: HashSet<K>,
    dirty: HashSet<K>,
    /// Dirty keys whose re-add was urgent.
    urgent_dirty: HashSet<K>,
    failures: HashMap<K, u32>,
    shutdown: bool,
}

/// See the module documentation. Cheap to clone; all clones share one queue.
pub struct WorkQueue<K> {
    state: Arc<Mutex<State<K>>>,
    wake: Arc<Notify>,
    backoff: Backoff,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            wake: self.wake.clone(),
            backoff: self.backoff,
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                ready: VecDeque::new(),
                urgent: VecDeque::new(),
                queued: HashSet::new(),
                delayed: HashMap::new(),
                timeline: BTreeSet::new(),
                by_seq: HashMap::new(),
                seq: 0,
                processing: HashSet::new(),
                dirty: HashSet::new(),
                urgent_dirty: HashSet::new(),
                failures: HashMap::new(),
                shutdown: false,
            })),
            wake: Arc::new(Notify::new()),
            backoff,
        }
    }

    /// Queue `key` for processing now.
    pub fn add(&self, key: K) {
        self.add_now(key, false);
    }

    /// Queue `key` for processing now, ahead of every key queued with [`WorkQueue::add`] (and
    /// of its own ordinary or delayed entry).
    pub fn add_urgent(&self, key: K) {
        self.add_now(key, true);
    }

    fn add_now(&self, key: K, urgent: bool) {
        let mut s = self.state.lock();
        if s.shutdown {
            return;
        }
        if s.processing.contains(&key) {
            Self::mark_dirty(&mut s, key, urgent);
            return;
        }
        if Self::enqueue_now(&mut s, key, urgent) {
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Queue `key` for processing after `delay`, unless it is already due earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut s = self.state.lock();
        if s.shutdown {
            return;
        }
        if s.queued.contains(&key) {
            match s.delayed.get(&key) {
                None => return, // already ready
                Some(&(existing, _)) if existing <= at => return,
                Some(&slot) => {
                    s.delayed.remove(&key);
                    Self::unschedule(&mut s, slot)
                }
            }
        }
        s.seq += 1;
        let seq = s.seq;
        s.timeline.insert((at, seq));
        s.by_seq.insert(seq, key.clone());
        s.delayed.insert(key.clone(), (at, seq));
        s.queued.insert(key);
        drop(s);
        // A sleeping worker may need to wake earlier than it planned.
        self.wake.notify_one();
    }

    /// Re-add `key` after its backoff grows by one step; returns the chosen delay.
    pub fn retry(&self, key: K) -> Duration {
        self.retry_at_least(key, Duration::ZERO)
    }

    /// Like [`WorkQueue::retry`], but never sooner than `min` (a backend's retry-after hint).
    pub fn retry_at_least(&self, key: K, min: Duration) -> Duration {
        let failures = {
            let mut s = self.state.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = self.backoff.delay(failures).max(min);
        self.add_after(key, delay);
        delay
    }

    /// How many times in a row `key` has failed.
    pub fn failures(&self, key: &K) -> u32 {
        self.state.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Reset the backoff of `key` (after a success).
    pub fn forget(&self, key: &K) {
        self.state.lock().failures.remove(key);
    }

    /// Drop every trace of `key`: queued work, backoff, dirty mark.
    pub fn remove(&self, key: &K) {
        let mut s = self.state.lock();
        s.failures.remove(key);
        s.dirty.remove(key);
        s.urgent_dirty.remove(key);
        if let Some(slot) = s.delayed.remove(key) {
            Self::unschedule(&mut s, slot);
        }
        if s.queued.remove(key) {
            s.ready.retain(|k| k != key);
            s.urgent.retain(|k| k != key);
        }
    }

    /// Mark `key` finished; if it was added while being processed it is queued again, right away
    /// (even if a delayed re-add was also scheduled meanwhile).
    pub fn done(&self, key: &K) {
        let mut s = self.state.lock();
        s.processing.remove(key);
        let urgent = s.urgent_dirty.remove(key);
        if !s.dirty.remove(key) || s.shutdown {
            return;
        }
        if Self::enqueue_now(&mut s, key.clone(), urgent) {
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Keys waiting to run now or later (not counting those being processed).
    pub fn len(&self) -> usize {
        self.state.lock().queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stop handing out keys; pending [`WorkQueue::next`] calls return `None`.
    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_waiters();
    }

    /// Wait for the next key that is due and not being processed elsewhere.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_deadline = {
                let mut s = self.state.lock();
                if s.shutdown {
                    return None;
                }
                Self::promote_due(&mut s, Instant::now());
                if let Some(key) = Self::pop_ready(&mut s) {
                    let more = !s.ready.is_empty() || !s.urgent.is_empty();
                    drop(s);
                    if more {
                        // Pass the baton so other idle workers pick up the rest.
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
                s.timeline.first().map(|(at, _)| *at)
            };
            match next_deadline {
                Some(at) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Mark `key`, which a worker holds, to run again once done (in the urgent lane if `urgent`).
    fn mark_dirty(s: &mut State<K>, key: K, urgent: bool) {
        if urgent {
            s.urgent_dirty.insert(key.clone());
        }
        s.dirty.insert(key);
    }

    /// Put `key`, which no worker holds, in a lane to run now, off any deadline it waited for.
    /// Returns whether it went into a lane (a worker is then to be woken): an ordinary key
    /// already waiting does not; an urgent one always does, its ordinary copy going stale
    /// (see `pop_ready`).
    fn enqueue_now(s: &mut State<K>, key: K, urgent: bool) -> bool {
        if let Some(slot) = s.delayed.remove(&key) {
            Self::unschedule(s, slot);
            s.queued.remove(&key);
        }
        if urgent {
            s.queued.insert(key.clone());
            s.urgent.push_back(key);
        } else if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
        } else {
            return false;
        }
        true
    }

    fn pop_ready(s: &mut State<K>) -> Option<K> {
        loop {
            let (key, urgent) = match s.urgent.pop_front() {
                Some(key) => (key, true),
                None => (s.ready.pop_front()?, false),
            };
            // A stale copy: the other lane's was taken already, or the key now waits for a
            // deadline (a retry's backoff must not be cut short by an old copy).
            if s.delayed.contains_key(&key) || !s.queued.remove(&key) {
                continue;
            }
            if s.processing.contains(&key) {
                Self::mark_dirty(s, key, urgent);
                continue;
            }
            s.processing.insert(key.clone());
            return Some(key);
        }
    }

    fn promote_due(s: &mut State<K>, now: Instant) {
        while let Some(&(at, seq)) = s.timeline.first() {
            if at > now {
                break;
            }
            s.timeline.remove(&(at, seq));
            if let Some(key) = s.by_seq.remove(&seq) {
                s.delayed.remove(&key);
                s.ready.push_back(key);
            }
        }
    }

    fn unschedule(s: &mut State<K>, slot: (Instant, u64)) {
        s.by_seq.remove(&slot.1);
        s.timeline.remove(&slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn dedupes_keys() {
        let q = queue();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn key_added_while_processing_runs_again_after_done() {
        let q = queue();
        q.add("a");
        let k = q.next().await;
        assert_eq!(k, Some("a"));
        q.add("a");
        assert!(q.is_empty(), "a dirty key is not handed to a second worker");
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn dirty_key_runs_now_even_if_a_delayed_retry_was_scheduled_while_processing() {
        let q = queue();
        let start = Instant::now();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a"); // an event arrives while the worker runs
        q.add_after("a", Duration::from_secs(30)); // the worker plans a late re-check
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the event is not held back by the delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_keys_go_ahead_of_ordinary_ones() {
        let q = queue();
        q.add("new-1");
        q.add("new-2");
        q.add_urgent("status");
        assert_eq!(q.next().await, Some("status"));
        assert_eq!(q.next().await, Some("new-1"));
        assert_eq!(q.next().await, Some("new-2"));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ordinary_key_made_urgent_runs_once_and_first() {
        let q = queue();
        q.add("a");
        q.add("b");
        q.add_urgent("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("b"));
        q.done(&"b");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        // b's ordinary copy is stale: b does not run twice.
        assert!(q.is_empty());
        tokio::select! {
            k = q.next() => panic!("{k:?} ran again"),
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_key_added_while_processing_runs_again_ahead_of_others() {
        let q = queue();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("b");
        q.add_urgent("a");
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_brings_a_delayed_key_forward_and_a_stale_copy_never_cuts_a_backoff() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(30));
        q.add_urgent("a");
        assert_eq!(q.next().await, Some("a"));
        assert!(start.elapsed() < Duration::from_secs(1));
        q.done(&"a");

        // "b" is queued, made urgent and taken; its ordinary copy stays behind. A retry then
        // schedules b for later: the stale copy must not run it before its deadline.
        q.add("b");
        q.add_urgent("b");
        assert_eq!(q.next().await, Some("b"));
        let retried = Instant::now();
        let delay = q.retry("b");
        q.done(&"b");
        assert_eq!(q.next().await, Some("b"));
        assert!(
            retried.elapsed() >= delay,
            "ran {:?} into a {delay:?} backoff",
            retried.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_key_waits_for_its_deadline() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.next().await, Some("a"));
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn add_moves_delayed_key_earlier_but_add_after_never_later() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(2));
        q.add_after("a", Duration::from_secs(60));
        assert_eq!(q.next().await, Some("a"));
        assert!(start.elapsed() < Duration::from_secs(3));
        q.done(&"a");
        q.add_after("b", Duration::from_secs(60));
        q.add("b");
        assert_eq!(q.next().await, Some("b"));
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_backoff_doubles_to_cap_and_forget_resets() {
        let q = queue();
        let delays: Vec<_> = (0..6)
            .map(|_| {
                let d = q.retry("a");
                d.as_secs()
            })
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(q.failures(&"a"), 6);
        q.forget(&"a");
        assert_eq!(q.retry("a"), Duration::from_secs(1));
        assert_eq!(
            q.retry_at_least("a", Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_worker_wakes_for_new_work() {
        let q = queue();
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.next().await });
        tokio::task::yield_now().await;
        q.add("x");
        assert_eq!(h.await.ok().flatten(), Some("x"));
    }

    #[tokio::test(start_paused = true)]
    async fn many_workers_drain_a_burst() {
        let q: WorkQueue<u32> = WorkQueue::new(Backoff::default());
        let mut handles = Vec::new();
        for _ in 0..8 {
            let q = q.clone();
            handles.push(tokio::spawn(async move {
                let mut n = 0;
                while let Some(k) = q.next().await {
                    n += 1;
                    q.done(&k);
                }
                n
            }));
        }
        for i in 0..1000 {
            q.add(i);
        }
        while !q.is_empty() {
            tokio::task::yield_now().await;
        }
        q.shutdown();
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap_or(0);
        }
        assert_eq!(total, 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn remove_drops_queued_and_delayed_work() {
        let q = queue();
        q.add("a");
        q.add_after("b", Duration::from_secs(1));
        q.remove(&"a");
        q.remove(&"b");
        assert!(q.is_empty());
        q.shutdown();
        assert_eq!(q.next().await, None);
    }
}
