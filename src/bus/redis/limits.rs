//! Rate-limit buckets in Redis, shared by every replica: GCRA over one key per action and
//! agent, in Redis's own clock so replicas' clocks do not matter.

use super::{COMMAND_TIMEOUT, Shared};
use crate::bus::{BusError, SharedLimits};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// The theoretical arrival time in ms. Returns 0 when allowed, else the milliseconds to wait.
const GCRA: &str = r#"
-- Redis 5 and 6 refuse a write after TIME unless effects are replicated; 7 always does.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return allow_at - now
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
return 0
"#;

pub struct RedisLimits {
    shared: Arc<Shared>,
    script: redis::Script,
}

impl RedisLimits {
    pub(super) fn new(shared: Arc<Shared>) -> RedisLimits {
        RedisLimits {
            shared,
            script: redis::Script::new(GCRA),
        }
    }
}

#[async_trait::async_trait]
impl SharedLimits for RedisLimits {
    async fn take(
        &self,
        action: &str,
        key: &str,
        limit: u32,
        period: Duration,
    ) -> Result<Result<(), Duration>, BusError> {
        let interval = (period.as_millis() as u64 / limit.max(1) as u64).max(1);
        let Some(mut conn) = self.shared.commands() else {
            return Err(BusError::Unavailable(
                "redis cluster not reached yet".into(),
            ));
        };
        let mut inv = self.script.key(self.shared.names.rate(action, key));
        inv.arg(interval).arg(limit.max(1));
        match timeout(COMMAND_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(0)) => Ok(Ok(())),
            Ok(Ok(wait)) => Ok(Err(Duration::from_millis(wait.max(1) as u64))),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("rate limit check timed out".into())),
        }
    }
}
