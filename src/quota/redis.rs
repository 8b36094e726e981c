//! The shared store: counters in Redis, checked and reserved by one Lua script per group of
//! keys, so that any number of gateways on one Redis enforce one budget.
//!
//! Keys carry a hash tag per caller (`ultra:{s:alice}:users:m:29000000`) and one per shared rule,
//! so that every key one script touches is in one Redis Cluster slot; a reservation over a
//! caller's rules and shared rules runs one script per tag, giving back what earlier ones
//! reserved when a later one refuses. The connection is made on first use (the gateway starts
//! and serves while Redis is down); every call is bounded by `timeout_ms`, and after a failure
//! the store is not asked again for a second, so an outage costs a request at most
//! `timeout_ms` once and nothing after. One log line when Redis goes away, one when it is back.

use super::window::{Windows, DAY_MS, MINUTE_MS};
use super::{Checked, Counts, LimitKind, Part, Scope, Spend, StoreDown, Taken};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Check every part, then add to all. Per part, ARGV holds its four limits (-1: none), then
/// the tokens it asks for and needs, then the micro-dollars it asks for and needs; it takes
/// what it asks for, or less where a limit has less room (never less than it needs). Returns
/// `{1, per part: its four counts before, then the tokens and micro-dollars taken}` or
/// `{0, part, limit, that part's four counts}`.
const RESERVE: &str = r#"
local n = #KEYS / 2
local before, taken = {}, {}
for i = 1, n do
  local mk, dk = KEYS[2*i-1], KEYS[2*i]
  local a = 2 + (i-1)*8
  local cur = {
    tonumber(redis.call('HGET', mk, 'r') or 0),
    tonumber(redis.call('HGET', mk, 't') or 0),
    tonumber(redis.call('HGET', dk, 't') or 0),
    tonumber(redis.call('HGET', dk, 'c') or 0)}
  local want = {1, tonumber(ARGV[a+5]), tonumber(ARGV[a+5]), tonumber(ARGV[a+7])}
  local need = {1, tonumber(ARGV[a+6]), tonumber(ARGV[a+6]), tonumber(ARGV[a+8])}
  local take = {}
  for k = 1, 4 do
    local lim = tonumber(ARGV[a+k])
    take[k] = want[k]
    if lim >= 0 then
      local room = lim - cur[k]
      if need[k] > room then
        return {0, i, k, cur[1], cur[2], cur[3], cur[4]}
      end
      if room < take[k] then take[k] = room end
    end
  end
  before[i], taken[i] = cur, take
end
local out = {1}
for i = 1, n do
  local mk, dk = KEYS[2*i-1], KEYS[2*i]
  local t = taken[i]
  redis.call('HINCRBY', mk, 'r', 1)
  redis.call('HINCRBY', mk, 't', t[2])
  redis.call('PEXPIRE', mk, ARGV[1])
  redis.call('HINCRBY', dk, 't', t[3])
  redis.call('HINCRBY', dk, 'c', t[4])
  redis.call('PEXPIRE', dk, ARGV[2])
  for k = 1, 4 do out[#out+1] = before[i][k] end
  for k = 2, 4 do out[#out+1] = t[k] end
end
return out
"#;

/// Replace each part's reservation with what was spent, in windows that still exist; give the
/// request back when `ARGV[1]` is 1.
const SETTLE: &str = r#"
local release = ARGV[1] == '1'
local t, c = tonumber(ARGV[2]), tonumber(ARGV[3])
local function adjust(key, field, reserved, actual)
  local v = tonumber(redis.call('HGET', key, field) or 0) - reserved + actual
  if v < 0 then v = 0 end
  redis.call('HSET', key, field, v)
end
for i = 1, #KEYS / 2 do
  local mk, dk = KEYS[2*i-1], KEYS[2*i]
  local a = 3 + (i-1)*3
  if redis.call('EXISTS', mk) == 1 then
    if release then adjust(mk, 'r', 1, 0) end
    adjust(mk, 't', tonumber(ARGV[a+1]), t)
  end
  if redis.call('EXISTS', dk) == 1 then
    adjust(dk, 't', tonumber(ARGV[a+2]), t)
    adjust(dk, 'c', tonumber(ARGV[a+3]), c)
  end
end
return 1
"#;

/// Numbers sent to the scripts stay below 2^53: Lua's numbers are doubles.
const MAX_ARG: u64 = (1 << 53) - 1;

fn arg(v: u64) -> u64 {
    v.min(MAX_ARG)
}

/// How long the store is left alone after a failure.
const BACK_OFF_MS: u64 = 1000;
/// Keys outlive their window a little, for clocks a little apart.
const MINUTE_TTL_MS: u64 = 2 * MINUTE_MS;
const DAY_TTL_MS: u64 = DAY_MS + 3_600_000;

pub struct RedisStore {
    client: redis::Client,
    /// Made on first use; concurrent first users wait for the one connection.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    reserve: redis::Script,
    settle: redis::Script,
    /// Unix ms before which the store is not asked (after a failure).
    retry_at_ms: AtomicU64,
    down: AtomicBool,
}

impl RedisStore {
    /// A store for `url` (not connected until first used).
    pub fn new(url: &str, prefix: &str, timeout_ms: u64) -> Result<RedisStore, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("not a usable Redis URL ({:?})", e.kind()))?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
            timeout: Duration::from_millis(timeout_ms.max(1)),
            reserve: redis::Script::new(RESERVE),
            settle: redis::Script::new(SETTLE),
            retry_at_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let c = self
            .conn
            .get_or_try_init(|| {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(self.client.clone(), cfg)
            })
            .await?;
        Ok(c.clone())
    }

    /// Runs `call` with a connection, within the timeout, unless the store is backing off. A
    /// connection Redis closed (a restart behind a proxy, its `timeout`, `CLIENT KILL`) is
    /// reconnected and `call` tried once more, so that it fails the requests on it rather than
    /// everyone's for the back-off. The second try may repeat a command Redis ran before the
    /// connection went: a reservation or a spend is then counted twice, on the safe side.
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreDown>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if super::window::now_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(StoreDown);
        }
        self.run(what, true, async {
            match call(self.connection().await?).await {
                Err(e) if e.is_connection_dropped() => call(self.connection().await?).await,
                r => r,
            }
        })
        .await
    }

    /// Runs `call` even while backing off: giving back and settling what was reserved must be
    /// tried, or a failed fan-out would keep its reservation for the rest of the day. Not tried
    /// twice: a settlement applied twice would give back more than was taken. A dropped
    /// connection here starts no back-off: the admissions' own calls (tried twice) decide
    /// whether Redis is gone.
    async fn call_anyway<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreDown>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.run(what, false, async { call(self.connection().await?).await })
            .await
    }

    /// Awaits `run` within the timeout; an unreachable Redis starts the back-off (a dropped
    /// connection only when `dropped_backs_off`).
    async fn run<T>(
        &self,
        what: &str,
        dropped_backs_off: bool,
        run: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreDown> {
        let now = super::window::now_ms();
        let failure = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(v)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("quota store (Redis) answers again; quotas are shared again");
                }
                return Ok(v);
            }
            // Redis answered, with an error (a script error, a full memory): not an outage, so
            // no back-off for everyone; this request's check failed.
            Ok(Err(e)) if !unreachable(&e) => {
                tracing::warn!(during = what, error = %e, "quota store (Redis) refused a command");
                return Err(StoreDown);
            }
            Ok(Err(e)) if e.is_connection_dropped() && !dropped_backs_off => {
                tracing::debug!(during = what, error = %e, "quota store (Redis) connection dropped");
                return Err(StoreDown);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", self.timeout.as_millis()),
        };
        self.retry_at_ms.store(now + BACK_OFF_MS, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                during = what,
                error = %failure,
                "quota store (Redis) unreachable; quotas.on_store_error decides until it is back"
            );
        }
        Err(StoreDown)
    }

    fn tag(&self, part_scope: &Scope, rule: &str) -> String {
        match part_scope {
            Scope::Shared => format!("{}{{shared:{rule}}}", self.prefix),
            s => format!("{}{{{}}}", self.prefix, member(s)),
        }
    }

    fn keys(&self, p: &Part, w: Windows) -> (String, String) {
        let tag = self.tag(&p.scope, &p.rule);
        (
            format!("{tag}:{}:m:{}", p.rule, w.minute),
            format!("{tag}:{}:d:{}", p.rule, w.day),
        )
    }

    /// Checks and reserves, one script per hash tag; a later refusal gives back what earlier
    /// scripts reserved.
    pub async fn reserve(&self, parts: &mut [Part], w: Windows) -> Result<Checked, StoreDown> {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let tag = self.tag(&p.scope, &p.rule);
            match groups.iter_mut().find(|(t, _)| *t == tag) {
                Some((_, members)) => members.push(i),
                None => groups.push((tag, vec![i])),
            }
        }
        let mut counts = vec![Counts::default(); parts.len()];
        for (g, (_, members)) in groups.iter().enumerate() {
            match self.reserve_group(parts, members, w).await {
                Ok(Ok(reserved)) => {
                    for (&i, (before, taken)) in members.iter().zip(reserved) {
                        parts[i].taken = taken;
                        counts[i] = before.plus(&taken);
                    }
                }
                Ok(Err((j, kind, c))) => {
                    self.give_back(parts, &groups[..g], w).await;
                    return Ok(Checked::Over {
                        part: members[j],
                        kind,
                        counts: c,
                    });
                }
                Err(e) => {
                    self.give_back(parts, &groups[..g], w).await;
                    return Err(e);
                }
            }
        }
        Ok(Checked::Admitted(counts))
    }

    /// One script run: `Ok((counts before, taken))` per member, or `Err((member index, kind,
    /// its counts))`.
    #[allow(clippy::type_complexity)]
    async fn reserve_group(
        &self,
        parts: &[Part],
        members: &[usize],
        w: Windows,
    ) -> Result<Result<Vec<(Counts, Taken)>, (usize, LimitKind, Counts)>, StoreDown> {
        let mut inv = self.reserve.prepare_invoke();
        inv.arg(MINUTE_TTL_MS).arg(DAY_TTL_MS);
        for &i in members {
            let p = &parts[i];
            let (mk, dk) = self.keys(p, w);
            inv.key(mk).key(dk);
            let l = |v: Option<u64>| v.map_or(-1, |v| arg(v) as i64);
            inv.arg(l(p.limits.requests_per_minute))
                .arg(l(p.limits.tokens_per_minute))
                .arg(l(p.limits.tokens_per_day))
                .arg(l(p.limits.micro_usd_per_day))
                .arg(arg(p.ask.tokens))
                .arg(arg(p.ask.tokens_needed))
                .arg(arg(p.ask.micro_usd))
                .arg(arg(p.ask.micro_usd_needed));
        }
        let reply: Vec<i64> = self
            .call("reserve", |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let num = |k: usize| reply.get(k).copied().unwrap_or(0).max(0) as u64;
        let counts_at = |k: usize| Counts {
            requests: num(k),
            tokens_minute: num(k + 1),
            tokens_day: num(k + 2),
            micro_usd_day: num(k + 3),
        };
        if reply.first() == Some(&1) {
            let each = |m: usize| {
                let k = 1 + 7 * m;
                let taken = Taken {
                    tokens_minute: num(k + 4),
                    tokens_day: num(k + 5),
                    micro_usd: num(k + 6),
                };
                (counts_at(k), taken)
            };
            Ok(Ok((0..members.len()).map(each).collect()))
        } else {
            let j = (num(1) as usize).saturating_sub(1).min(members.len() - 1);
            let kind = match num(2) {
                1 => LimitKind::RequestsPerMinute,
                2 => LimitKind::TokensPerMinute,
                3 => LimitKind::TokensPerDay,
                _ => LimitKind::CostPerDay,
            };
            Ok(Err((j, kind, counts_at(3))))
        }
    }

    async fn give_back(&self, parts: &[Part], groups: &[(String, Vec<usize>)], w: Windows) {
        for (_, members) in groups {
            let ps: Vec<Part> = members.iter().map(|&i| parts[i].clone()).collect();
            let _ = self.settle_parts(&ps, w, None).await;
        }
    }

    async fn settle_parts(
        &self,
        parts: &[Part],
        w: Windows,
        spent: Option<(u64, u64)>,
    ) -> Result<(), StoreDown> {
        if parts.is_empty() {
            return Ok(());
        }
        // One script per tag (each touches one slot).
        let mut tags: Vec<String> = parts.iter().map(|p| self.tag(&p.scope, &p.rule)).collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            let mut inv = self.settle.prepare_invoke();
            let (t, c) = spent.unwrap_or((0, 0));
            inv.arg(if spent.is_none() { 1 } else { 0 })
                .arg(arg(t))
                .arg(arg(c));
            for p in parts.iter().filter(|p| self.tag(&p.scope, &p.rule) == tag) {
                let (mk, dk) = self.keys(p, w);
                inv.key(mk).key(dk);
                inv.arg(arg(p.taken.tokens_minute))
                    .arg(arg(p.taken.tokens_day))
                    .arg(arg(p.taken.micro_usd));
            }
            self.call_anyway("settle", |mut c| async move {
                inv.invoke_async::<i64>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    /// Settles (and records the caller's spending) in a task of its own.
    pub fn settle_in_background(
        self: &Arc<Self>,
        parts: Vec<Part>,
        w: Windows,
        spent: Option<(u64, u64)>,
        scope: Scope,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            let _ = me.settle_parts(&parts, w, spent).await;
            if let Some((tokens, micro)) = spent {
                let _ = me.record_spend(&scope, w, tokens, micro).await;
            }
        });
    }

    fn spend_key(&self, scope: &Scope, w: Windows) -> String {
        format!("{}{{{}}}:spend:d:{}", self.prefix, member(scope), w.day)
    }

    fn top_key(&self, w: Windows) -> String {
        format!("{}{{top}}:d:{}", self.prefix, w.day)
    }

    async fn record_spend(
        &self,
        scope: &Scope,
        w: Windows,
        tokens: u64,
        micro: u64,
    ) -> Result<(), StoreDown> {
        let key = self.spend_key(scope, w);
        let top = self.top_key(w);
        let m = member(scope);
        // Ordered by cost, then tokens (a fraction below one micro-dollar).
        let score = micro as f64 + (tokens as f64 / 1e9).min(0.999);
        let (key, top, m) = (&key, &top, &m);
        self.call("record", |mut c| async move {
            redis::pipe()
                .hincr(key, "r", 1)
                .hincr(key, "t", tokens)
                .hincr(key, "c", micro)
                .pexpire(key, DAY_TTL_MS as i64)
                .query_async::<()>(&mut c)
                .await?;
            redis::pipe()
                .zincr(top, m, score)
                .pexpire(top, DAY_TTL_MS as i64)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// A rule's counts for a scope now.
    pub async fn counts(
        &self,
        rule: &Arc<str>,
        scope: &Scope,
        w: Windows,
    ) -> Result<Counts, StoreDown> {
        let p = Part {
            rule: rule.clone(),
            scope: scope.clone(),
            limits: Default::default(),
            ask: Default::default(),
            taken: Default::default(),
        };
        let (mk, dk) = self.keys(&p, w);
        let (mk, dk) = (&mk, &dk);
        let (m, d): (Vec<Option<u64>>, Vec<Option<u64>>) = self
            .call("read", |mut c| async move {
                let m = redis::cmd("HMGET")
                    .arg(mk)
                    .arg("r")
                    .arg("t")
                    .query_async(&mut c)
                    .await?;
                let d = redis::cmd("HMGET")
                    .arg(dk)
                    .arg("t")
                    .arg("c")
                    .query_async(&mut c)
                    .await?;
                Ok((m, d))
            })
            .await?;
        let at = |v: &Vec<Option<u64>>, i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(Counts {
            requests: at(&m, 0),
            tokens_minute: at(&m, 1),
            tokens_day: at(&d, 0),
            micro_usd_day: at(&d, 1),
        })
    }

    /// A caller's spending today.
    pub async fn spend(&self, scope: &Scope, w: Windows) -> Result<Spend, StoreDown> {
        let key = &self.spend_key(scope, w);
        let v: Vec<Option<u64>> = self
            .call("read", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("r")
                    .arg("t")
                    .arg("c")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(Spend {
            requests: at(0),
            tokens: at(1),
            micro_usd: at(2),
        })
    }

    /// The biggest spenders today.
    pub async fn top(&self, n: usize, w: Windows) -> Result<Vec<(Scope, Spend)>, StoreDown> {
        let key = &self.top_key(w);
        let members: Vec<String> = self
            .call("read", |mut c| async move {
                redis::cmd("ZREVRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(n.saturating_sub(1) as i64)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let Some(scope) = scope_of_member(&m) else {
                continue;
            };
            let s = self.spend(&scope, w).await?;
            out.push((scope, s));
        }
        Ok(out)
    }
}

/// Whether an error means Redis cannot be reached (rather than that it answered with an error).
fn unreachable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// A caller as a Redis hash tag and `top` member: `s:<subject>` or `k:<key id>`.
fn member(scope: &Scope) -> String {
    match scope {
        Scope::Shared => "shared".into(),
        Scope::Subject(s) => format!("s:{s}"),
        Scope::ApiKey(k) => format!("k:{k}"),
    }
}

fn scope_of_member(m: &str) -> Option<Scope> {
    if let Some(s) = m.strip_prefix("s:") {
        Some(Scope::Subject(Arc::from(s)))
    } else {
        m.strip_prefix("k:").map(|k| Scope::ApiKey(Arc::from(k)))
    }
}
