//! Typed errors of the provider contract, and how the core reacts to each kind.

use std::time::Duration;

/// What went wrong when the core asked a backend to do something.
///
/// The kind decides the core's reaction: [`ProviderError::InvalidInput`] and
/// [`ProviderError::NotSupported`] fail the pod for good with a precise reason, everything else is
/// retried with capped exponential backoff for as long as the pod exists.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The backend has no such pod. For deletes this counts as success.
    #[error("not found: {0}")]
    NotFound(String),
    /// The pod spec is something this backend will never accept (bad image, bad field value).
    #[error("invalid pod for this backend: {0}")]
    InvalidInput(String),
    /// The backend lacks a capability the request needs (a volume type, exec, ...).
    #[error("not supported by this backend: {0}")]
    NotSupported(String),
    /// The backend has no capacity right now (a serverless pool that is sold out).
    #[error("backend capacity sold out: {0}")]
    SoldOut(String),
    /// The account's quota on the backend is exhausted.
    #[error("backend quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A failure expected to go away by itself (network, throttling, 5xx from a cloud API).
    #[error("transient backend failure: {message}")]
    Transient {
        message: String,
        /// A hint from the backend about when to try again.
        retry_after: Option<Duration>,
    },
    /// Anything else; retried like a transient failure.
    #[error("backend failure: {0}")]
    Other(String),
}

impl ProviderError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Whether retrying the same request can ever succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::InvalidInput(_) | Self::NotSupported(_))
    }

    /// Whether a create that failed this way may have left something on the backend: anything
    /// but a refusal (an invalid or unsupported pod, no capacity, no quota), which promises that
    /// nothing was left. After a transient or unclassified failure the outcome is unknown.
    pub fn may_have_created(&self) -> bool {
        !matches!(
            self,
            Self::InvalidInput(_)
                | Self::NotSupported(_)
                | Self::SoldOut(_)
                | Self::QuotaExceeded(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::InvalidInput(_) => "invalid_input",
            Self::NotSupported(_) => "not_supported",
            Self::SoldOut(_) => "sold_out",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::Transient { .. } => "transient",
            Self::Other(_) => "other",
        }
    }

    /// The pod status reason shown while this error keeps a pod from running.
    pub fn pod_reason(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "ProviderRejected",
            Self::NotSupported(_) => "UnsupportedPodSpec",
            Self::SoldOut(_) => "ProviderSoldOut",
            Self::QuotaExceeded(_) => "ProviderQuotaExceeded",
            Self::NotFound(_) | Self::Transient { .. } | Self::Other(_) => "ProviderFailed",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProviderError;

    #[test]
    fn only_a_refused_create_promises_it_left_nothing() {
        let refused = [
            ProviderError::InvalidInput("bad image".into()),
            ProviderError::NotSupported("hostPath".into()),
            ProviderError::SoldOut("pool".into()),
            ProviderError::QuotaExceeded("pods".into()),
        ];
        for e in refused {
            assert!(!e.may_have_created(), "{e}");
        }
        let unknown = [
            ProviderError::transient("504"),
            ProviderError::Other("unexpected".into()),
            ProviderError::NotFound("namespace".into()),
        ];
        for e in unknown {
            assert!(e.may_have_created(), "{e}");
        }
    }
}
