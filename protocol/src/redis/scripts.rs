//! The Lua scripts that make multi-step Kombu operations atomic on the server.
//!
//! Kombu does these steps from the client (BRPOP, then ZADD+HSET; WATCH/MULTI for restores);
//! a script does the same writes to the same keys in one step, so no crash can fall between
//! them, and one round trip serves a whole batch.

use std::sync::LazyLock;

use redis::Script;

/// Takes up to `ARGV[1]` messages from the lists `KEYS[4..]`, in order, recording each in the
/// unacked hash `KEYS[1]` (value `[envelope, exchange, routing_key]`, as Kombu writes it) and the
/// index `KEYS[2]` (score `ARGV[2]`, the delivery time). The tags taken replace the contents of
/// the set `KEYS[3]` (expiring after `ARGV[5]` seconds), so a caller whose reply was lost can
/// find what this call took. A list element that is not a Kombu envelope cannot be tracked, so
/// it is pushed onto the dead-letter list `ARGV[3]` in the same step. `ARGV[4]` is the worker's
/// name; `ARGV[5 + i]` is the queue of `KEYS[3 + i]`.
/// Returns `{key_index, raw, delivery_tag or ''}` per message (`''` = dead-lettered), where
/// `key_index` counts from 1 over `KEYS[4..]`.
pub static FETCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{DEAD_LETTER_RECORD}
local max = tonumber(ARGV[1])
local out = {{}}
local tags = {{}}
redis.call('DEL', KEYS[3])
for i = 4, #KEYS do
  while #out < max do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    local queue = ARGV[i + 2]
    local ok, env = pcall(cjson.decode, raw)
    local tag = nil
    if ok and type(env) == 'table' and type(env.properties) == 'table' then
      tag = env.properties.delivery_tag
    end
    if type(tag) == 'string' and tag ~= '' then
      local ex, rk = '', queue
      local info = env.properties.delivery_info
      if type(info) == 'table' then
        if type(info.exchange) == 'string' then ex = info.exchange end
        if type(info.routing_key) == 'string' then rk = info.routing_key end
      end
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. raw .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']')
      tags[#tags + 1] = tag
      out[#out + 1] = {{i - 3, raw, tag}}
    else
      redis.call('LPUSH', ARGV[3], dead_letter_record(
        'not a Kombu envelope: invalid JSON or no properties.delivery_tag', queue, ARGV[4], ARGV[2], raw))
      out[#out + 1] = {{i - 3, raw, ''}}
    end
  end
  if #out >= max then break end
end
for j = 1, #tags, 1000 do
  redis.call('SADD', KEYS[3], unpack(tags, j, math.min(j + 999, #tags)))
end
if #tags > 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
return out
"#
    ))
});

/// Lua that builds a dead-letter record exactly as [`dead_letter_record`](super::broker) does
/// in Rust: the payload as text when it is valid UTF-8, otherwise as base64.
const DEAD_LETTER_RECORD: &str = r#"
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function base64(s)
  local parts = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local function digit(shift) local d = math.floor(n / shift) % 64; return B64:sub(d + 1, d + 1) end
    parts[#parts + 1] = digit(262144) .. digit(4096) .. (b and digit(64) or '=') .. (c and digit(1) or '=')
  end
  return table.concat(parts)
end
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = 0
    if c < 0x80 then len = 1 elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3 elseif c >= 0xF0 and c <= 0xF4 then len = 4 end
    if len == 0 or i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local d = s:byte(j)
      if d < 0x80 or d > 0xBF then return false end
    end
    i = i + len
  end
  return true
end
local function dead_letter_record(reason, queue, worker, at, raw)
  local rec = {reason = reason, queue = queue, worker = worker, received_at = at}
  if valid_utf8(raw) then rec.payload = raw else rec.payload_base64 = base64(raw) end
  return cjson.encode(rec)
end
"#;

/// Moves one unacked message (tag `ARGV[1]`) back onto the list `KEYS[3]`: removes it from the
/// unacked hash `KEYS[1]` and index `KEYS[2]` and pushes `ARGV[2]` with `ARGV[3]` (`RPUSH`: next
/// to be taken, as Kombu's restore does; `LPUSH`: behind everything, as its reject does). With a
/// cutoff in `ARGV[4]`, only moves it if its index score is still at or below the cutoff, so a
/// message whose holder refreshed it in the meantime stays where it is. Returns 1 if moved.
pub static RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if not redis.call('HGET', KEYS[1], ARGV[1]) then return 0 end
if ARGV[4] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not score or tonumber(score) > tonumber(ARGV[4]) then return 0 end
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == 'LPUSH' then
  redis.call('LPUSH', KEYS[3], ARGV[2])
else
  redis.call('RPUSH', KEYS[3], ARGV[2])
end
return 1
"#,
    )
});

/// Deletes `KEYS[1]` only if it still holds the token `ARGV[1]` (releases the restore lock).
pub static RELEASE_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// Stores result records like Celery's Redis backend: for each key `KEYS[i]`, unless it already
/// holds a SUCCESS record (Celery's guard against a redelivered task overwriting its result),
/// `SETEX` (or `SET` when the TTL `ARGV[2i-1]` is 0) the record `ARGV[2i]` and `PUBLISH` it on
/// the key's channel for clients waiting in `AsyncResult.get()`. Returns how many were written.
pub static STORE_RESULTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local written = 0
for i = 1, #KEYS do
  local ttl = tonumber(ARGV[2 * i - 1])
  local record = ARGV[2 * i]
  local cur = redis.call('GET', KEYS[i])
  local keep = false
  if cur then
    local ok, meta = pcall(cjson.decode, cur)
    keep = ok and type(meta) == 'table' and meta.status == 'SUCCESS'
  end
  if not keep then
    if ttl > 0 then
      redis.call('SETEX', KEYS[i], ttl, record)
    else
      redis.call('SET', KEYS[i], record)
    end
    redis.call('PUBLISH', KEYS[i], record)
    written = written + 1
  end
end
return written
"#,
    )
});

/// Takes or renews a lease: `KEYS[1]` holds the owner's token `ARGV[1]` for `ARGV[2]` ms.
/// Returns 1 when the owner renewed it, 2 when it was free and is now taken, 0 when someone
/// else holds it.
pub static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#,
    )
});

/// Claims and publishes beat ticks in one atomic step, fenced by the lease `KEYS[1]` (token
/// `ARGV[1]`): nothing happens unless the caller still holds it (returns `{-1}`). For tick `i`
/// (list key `KEYS[3 + i]`; `ARGV[3i - 1]` entry name, `ARGV[3i]` nominal time in ms,
/// `ARGV[3i + 1]` the envelope), the tick is claimed if it is later than the last one recorded
/// for the entry in the hash `KEYS[2]`; a claimed tick is recorded there, counted in the hash
/// `KEYS[3]` and LPUSHed, as Kombu publishes. Returns 1 (sent) or 0 (already sent) per tick.
pub static PUBLISH_TICKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local out = {}
for i = 4, #KEYS do
  local j = 2 + (i - 4) * 3
  local name, tick = ARGV[j], tonumber(ARGV[j + 1])
  local last = redis.call('HGET', KEYS[2], name)
  if last and tonumber(last) >= tick then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[2], name, ARGV[j + 1])
    redis.call('HINCRBY', KEYS[3], name, 1)
    redis.call('LPUSH', KEYS[i], ARGV[j + 2])
    out[#out + 1] = 1
  end
end
return out
"#,
    )
});

/// Records a starting point for entries that have none, fenced by the lease `KEYS[1]` (token
/// `ARGV[1]`; `{-1}` when not held): for each pair `ARGV[2i]` (entry name), `ARGV[2i + 1]`
/// (Unix ms), HSETNX into the tick hash `KEYS[2]`. Returns the value recorded for each entry
/// afterwards (another leader's earlier record wins).
pub static SEED_TICKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
local out = {}
for j = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[2], ARGV[j], ARGV[j + 1])
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], ARGV[j]))
end
return out
"#,
    )
});
