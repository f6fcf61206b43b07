//! The counters, in Redis: one GCRA bucket per key (its theoretical
//! arrival time in microseconds of Redis's own clock, so every service
//! instance agrees), checked and taken in one Lua script so that a request
//! takes from all of its buckets or from none, atomically for the whole
//! fleet. A bucket key expires when its bucket is full again, so Redis
//! holds only the buckets in use.
//!
//! Every round is bounded by the configured timeout: a Redis that is down
//! or stopped is an `Err` in bounded time, never a hang. The connection
//! manager reconnects by itself once Redis is back, so recovery needs no
//! restart. A round that timed out here may still run in Redis later; it
//! then takes tokens for a request that was refused, which errs towards
//! fewer requests, never more.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio::sync::OnceCell;

/// `KEYS[i]`: the buckets; `ARGV[3i-2..3i]`: cost, interval (µs),
/// tolerance (burst × interval, µs). Returns `{allowed, refused_index,
/// wait_us, remaining_1, ...}`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats, rem = {}, {}
local worst, wait = 0, 0
for i = 1, n do
  local cost = tonumber(ARGV[3*i-2])
  local interval = tonumber(ARGV[3*i-1])
  local tol = tonumber(ARGV[3*i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tol
  if allow_at > now then
    if worst == 0 or allow_at - now > wait then worst = i; wait = allow_at - now end
    rem[i] = math.floor((tol - (tat - now)) / interval)
  else
    rem[i] = math.floor((tol - (new_tat - now)) / interval)
  end
  tats[i] = new_tat
end
if worst == 0 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1)
  end
end
local out = {worst == 0 and 1 or 0, worst, wait}
for i = 1, n do out[#out + 1] = rem[i] end
return out
"#;

/// One bucket a request takes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub key: String,
    pub cost: u64,
    pub interval_us: u64,
    pub burst: u64,
}

/// What Redis answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// With `allowed == false`: the bucket that refused (index into the
    /// takes) and how long until the request would pass.
    pub refused: Option<(usize, Duration)>,
    /// Tokens left per bucket.
    pub remaining: Vec<u64>,
}

pub struct Store {
    url: String,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
}

impl Store {
    pub fn new(url: String, timeout: Duration) -> Store {
        Store {
            url,
            timeout,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA),
        }
    }

    /// The shared connection, made on first use: the service starts (and
    /// says it is not ready) while Redis is still down.
    async fn conn(&self) -> Result<ConnectionManager, String> {
        let timeout = self.timeout;
        let url = self.url.clone();
        self.conn
            .get_or_try_init(|| async move {
                let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(|e| format!("redis: {e}"))
            })
            .await
            .cloned()
    }

    /// Checks and takes, in bounded time.
    pub async fn take(&self, takes: &[Take]) -> Result<Verdict, String> {
        let round = async {
            let mut conn = self.conn().await?;
            let mut inv = self.script.prepare_invoke();
            for t in takes {
                inv.key(&t.key)
                    .arg(t.cost)
                    .arg(t.interval_us)
                    .arg(t.burst.saturating_mul(t.interval_us));
            }
            inv.invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map_err(|e| format!("redis: {e}"))
        };
        let out = tokio::time::timeout(self.timeout, round)
            .await
            .map_err(|_| format!("redis: no answer in {} ms", self.timeout.as_millis()))??;
        verdict(&out, takes.len())
    }

    /// Readiness: Redis answers a PING in time.
    pub async fn ping(&self) -> Result<(), String> {
        let round = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map_err(|e| format!("redis: {e}"))
        };
        tokio::time::timeout(self.timeout, round)
            .await
            .map_err(|_| "redis: no answer".to_string())?
            .map(|_| ())
    }
}

fn verdict(out: &[i64], n: usize) -> Result<Verdict, String> {
    let bad = || format!("redis: unexpected script answer {out:?}");
    if out.len() != 3 + n {
        return Err(bad());
    }
    let (head, rest) = out.split_at(3);
    let [allowed, worst, wait] =
        [head.first(), head.get(1), head.get(2)].map(|v| v.copied().unwrap_or_default());
    let remaining = rest.iter().map(|&r| r.max(0) as u64).collect();
    let refused = if allowed == 1 {
        None
    } else {
        let i = usize::try_from(worst - 1).map_err(|_| bad())?;
        if i >= n {
            return Err(bad());
        }
        Some((i, Duration::from_micros(wait.max(0) as u64)))
    };
    Ok(Verdict {
        allowed: allowed == 1,
        refused,
        remaining,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_answer_is_read_or_refused() {
        let v = verdict(&[0, 2, 1_500_000, 4, 0], 2).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.refused, Some((1, Duration::from_micros(1_500_000))));
        assert_eq!(v.remaining, [4, 0]);
        assert!(verdict(&[1, 0, 0, 3], 1).unwrap().allowed);
        assert!(verdict(&[0, 3, 1, 0, 0], 2).is_err(), "index out of range");
        assert!(verdict(&[1, 0, 0], 1).is_err(), "too short");
    }
}
