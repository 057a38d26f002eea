//! The shared rate-limit seam: token buckets kept outside the process, so one budget holds
//! across every replica. The contract is the one of `ratelimit`'s own buckets.

use super::BusError;
use std::time::Duration;

#[async_trait::async_trait]
pub trait SharedLimits: Send + Sync {
    /// Takes one unit from the bucket `action` of `key` (`limit` per `period`): `Ok(Ok(()))`
    /// allowed, `Ok(Err(wait))` refused, `Err` when the shared store cannot say now.
    async fn take(
        &self,
        action: &str,
        key: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<(), Duration>, BusError>;
}
