//! Polling until a condition holds.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// A condition did not hold in time. `last` is what the final check observed.
#[derive(Debug, Clone)]
pub struct WaitTimeout<S> {
    /// How long we waited.
    pub elapsed: Duration,
    /// How many checks completed.
    pub attempts: u32,
    /// The state the last completed check reported; `None` if no check completed.
    pub last: Option<S>,
}

impl<S: fmt::Debug> fmt::Display for WaitTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "condition not met after {:?} ({} checks); last observed state: ",
            self.elapsed, self.attempts
        )?;
        match &self.last {
            Some(s) => write!(f, "{s:#?}"),
            None => write!(f, "<no check completed>"),
        }
    }
}

impl<S: fmt::Debug> std::error::Error for WaitTimeout<S> {}

/// Calls `check` every `interval` until it returns `Ok(value)`, and returns that value.
///
/// `check` returns `Err(state)` while the condition does not hold yet; `state` describes what it
/// saw (an object's status, a count, an error text ...). If the condition does not hold within
/// `timeout`, this panics with the last observed state, so a failing test says what it saw.
/// The check runs at least once and once more at the deadline.
///
/// ```no_run
/// # async fn f(pods: kube::Api<k8s_openapi::api::core::v1::Pod>) {
/// use std::time::Duration;
/// let phase = vk_testkit::wait_for(Duration::from_secs(30), Duration::from_millis(200), async || {
///     let pod = pods.get("p").await.map_err(|e| e.to_string())?;
///     let phase = pod.status.and_then(|s| s.phase);
///     if phase.as_deref() == Some("Running") { Ok(phase) } else { Err(format!("phase {phase:?}")) }
/// })
/// .await;
/// # }
/// ```
pub async fn wait_for<T, S, F>(timeout: Duration, interval: Duration, check: F) -> T
where
    S: fmt::Debug,
    F: AsyncFnMut() -> Result<T, S>,
{
    match try_wait_for(timeout, interval, check).await {
        Ok(v) => v,
        Err(e) => panic!("wait_for timed out: {e}"),
    }
}

/// Like [`wait_for`] but returns the timeout instead of panicking.
pub async fn try_wait_for<T, S, F>(
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, WaitTimeout<S>>
where
    F: AsyncFnMut() -> Result<T, S>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0;
    let mut last = None;
    loop {
        // A hung check (say, an API call that never returns) must not outlive the deadline by
        // more than one interval.
        let check_deadline = deadline.max(Instant::now() + interval);
        match tokio::time::timeout_at(check_deadline, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(state)) => {
                attempts += 1;
                last = Some(state);
            }
            Err(_) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout {
                elapsed: now - start,
                attempts,
                last,
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_value_once_condition_holds() {
        let mut n = 0;
        let v = wait_for(
            Duration::from_secs(10),
            Duration::from_millis(100),
            async || {
                n += 1;
                if n >= 3 { Ok(n * 10) } else { Err(n) }
            },
        )
        .await;
        assert_eq!(v, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_reports_last_state() {
        let mut n = 0u32;
        let err = try_wait_for(
            Duration::from_secs(1),
            Duration::from_millis(100),
            async || {
                n += 1;
                Err::<(), _>(format!("seen {n}"))
            },
        )
        .await
        .unwrap_err();
        assert!(err.attempts >= 10, "{err}");
        assert_eq!(err.last, Some(format!("seen {}", err.attempts)));
        assert!(err.to_string().contains("last observed state"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "still pending")]
    async fn wait_for_panics_with_last_state() {
        wait_for(
            Duration::from_millis(300),
            Duration::from_millis(100),
            async || Err::<(), _>("still pending"),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn hung_check_is_bounded() {
        let err = try_wait_for(
            Duration::from_secs(1),
            Duration::from_millis(100),
            async || std::future::pending::<Result<(), ()>>().await,
        )
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 0);
        assert!(err.last.is_none());
        assert!(err.elapsed < Duration::from_secs(2), "{err}");
    }
}
