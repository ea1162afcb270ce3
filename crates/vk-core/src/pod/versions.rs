//! Which copy of an API pod is the newest, without reading anything into `resourceVersion`.
//!
//! Copies reach the controller from the pod watch and from the answers to its own requests (a
//! status patch, a GET of the whole pod). Kubernetes' API conventions make `resourceVersion`
//! opaque: it may be compared for equality only, so its order is not the string's. Order comes
//! from the watch instead, which delivers every change of the pod, in order.
//!
//! Invariants:
//! - the watch's copy always wins over an answer that arrived after the watch moved on since the
//!   request was sent (the answer may predate what the watch delivered meanwhile);
//! - an accepted answer with a version the watch has not delivered yet is newer than anything the
//!   watch delivered, so the watch's copies are older until it delivers that very version;
//! - a relist (after the watch lost its place) is the state of the pod at that time and wins.

/// Where a copy of the pod comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// An event of the running watch (`Apply`).
    Watch,
    /// An object of a watch (re)list (`InitApply`).
    Relist,
    /// The answer to a request sent when [`CopyOrder::ticket`] said `ticket`.
    Answer { ticket: u64 },
}

/// Per pod: what the watch delivered, and the version of an answer it has yet to deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CopyOrder {
    /// Copies the watch delivered (and deletions); moves on with every one.
    delivered: u64,
    /// The version of an accepted answer the watch has not delivered yet.
    awaited: Option<String>,
}

impl CopyOrder {
    /// Taken before a request whose answer carries the pod, for [`Source::Answer`].
    pub(crate) fn ticket(&self) -> u64 {
        self.delivered
    }

    /// Whether a copy with version `version` from `source` replaces the one kept, whose version
    /// is `kept`.
    pub(crate) fn accept(
        &mut self,
        source: Source,
        kept: Option<&str>,
        version: Option<&str>,
    ) -> bool {
        match source {
            Source::Relist => {
                self.delivered += 1;
                self.awaited = None;
                true
            }
            Source::Watch => {
                self.delivered += 1;
                match self.awaited.as_deref() {
                    // The watch caught up with the answer we hold.
                    Some(awaited) if Some(awaited) == version => {
                        self.awaited = None;
                        true
                    }
                    // A change from before our own write, delivered late.
                    Some(_) => false,
                    None => true,
                }
            }
            Source::Answer { ticket } => {
                if ticket != self.delivered {
                    return false; // the watch moved on meanwhile: its copy may be newer
                }
                // The same version as kept (a write that changed nothing) is not awaited: the
                // watch delivered it already, or will not deliver it again.
                if version.is_some() && version != kept {
                    self.awaited = version.map(str::to_string);
                }
                true
            }
        }
    }

    /// The watch reported the pod deleted (or a relist did not list it).
    pub(crate) fn deleted(&mut self) {
        self.delivered += 1;
        self.awaited = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_copies_are_taken_in_the_order_delivered_whatever_the_version_says() {
        let mut o = CopyOrder::default();
        // Opaque versions: the second is "smaller" as a string and as anything else.
        assert!(o.accept(Source::Watch, None, Some("zz-9")));
        assert!(o.accept(Source::Watch, Some("zz-9"), Some("aa-1")));
        assert!(o.accept(Source::Watch, Some("aa-1"), Some("etcd/42?")));
    }

    #[test]
    fn an_answer_is_newer_until_the_watch_delivers_its_version() {
        let mut o = CopyOrder::default();
        assert!(o.accept(Source::Watch, None, Some("v-b")));
        let ticket = o.ticket();
        assert!(o.accept(Source::Answer { ticket }, Some("v-b"), Some("v-ours")));
        // A change made before our write, delivered late: older than what we hold.
        assert!(!o.accept(Source::Watch, Some("v-ours"), Some("v-a")));
        // Our own write, echoed by the watch: from here on the watch leads again.
        assert!(o.accept(Source::Watch, Some("v-ours"), Some("v-ours")));
        assert!(o.accept(Source::Watch, Some("v-ours"), Some("v-c")));
    }

    #[test]
    fn an_answer_that_arrives_after_the_watch_moved_on_is_dropped() {
        let mut o = CopyOrder::default();
        assert!(o.accept(Source::Watch, None, Some("one")));
        let ticket = o.ticket();
        // The watch delivers our write and a later change before the answer comes back.
        assert!(o.accept(Source::Watch, Some("one"), Some("ours")));
        assert!(o.accept(Source::Watch, Some("ours"), Some("later")));
        assert!(!o.accept(Source::Answer { ticket }, Some("later"), Some("ours")));
        // Nothing is awaited: the watch's next copy is taken.
        assert!(o.accept(Source::Watch, Some("later"), Some("latest")));
    }

    #[test]
    fn a_write_that_changed_nothing_awaits_nothing() {
        let mut o = CopyOrder::default();
        assert!(o.accept(Source::Watch, None, Some("same")));
        let ticket = o.ticket();
        assert!(o.accept(Source::Answer { ticket }, Some("same"), Some("same")));
        assert!(o.accept(Source::Watch, Some("same"), Some("next")));
    }

    #[test]
    fn a_relist_wins_over_an_awaited_answer() {
        let mut o = CopyOrder::default();
        assert!(o.accept(Source::Watch, None, Some("a")));
        let ticket = o.ticket();
        assert!(o.accept(Source::Answer { ticket }, Some("a"), Some("b")));
        // The watch lost its place and listed again: the listed copy is the pod as it is.
        assert!(o.accept(Source::Relist, Some("b"), Some("c")));
        assert!(o.accept(Source::Watch, Some("c"), Some("d")));
    }

    #[test]
    fn a_deletion_clears_what_was_awaited() {
        let mut o = CopyOrder::default();
        let ticket = o.ticket();
        assert!(o.accept(Source::Answer { ticket }, None, Some("x")));
        o.deleted();
        assert!(
            !o.accept(Source::Answer { ticket }, None, Some("x")),
            "stale ticket"
        );
        assert!(o.accept(Source::Watch, None, Some("y")));
    }
}
