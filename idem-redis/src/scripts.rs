//! The server-side state transitions, one Lua script each, so that every transition is atomic
//! on the server and single-slot (all keys of one idempotency key share a hash tag).
//!
//! Every script reads and validates before its first write, so an error (a value of the wrong
//! type or shape at our keys) never leaves a partial change. Lease expiry is the server's: a
//! pending claim is a key with a `PX` expiry, so a lapsed lease is simply an absent key.
//!
//! These scripts are the slow path of a claim: the fast path is a plain `SET NX GET` (see
//! `store.rs`), and the claim script runs only when that finds a claim in progress, a released
//! claim, or a fence to correct. Fences the scripts assign are `max(last + 1, server time in µs)`,
//! where `last` is the fence key's value or a released claim's fence; see `store.rs` for why the
//! fast path's fences keep increasing too.

use std::sync::LazyLock;

use redis::Script;

use crate::server_clock::MAX_FENCE_ERROR;
use crate::state::MAX_FENCE;

/// The shared preamble: parse a state value or a fence, or fail with `IDEM_CORRUPT` before any
/// write. `valid_fence` accepts exactly what `state::parse_fence` does (1 to 16 digits, no
/// leading zero, at most `MAX_FENCE`) (its bound is put in from
/// Rust), so a value is never corrupt to one side and usable to the other.
const PREAMBLE: &str = r#"
local MAX_FENCE = __MAX_FENCE__
local function valid_fence(text)
  if type(text) ~= 'string' or #text < 1 or #text > 16 or not string.match(text, '^%d+$')
    or (#text > 1 and string.sub(text, 1, 1) == '0') then
    return nil
  end
  local n = tonumber(text)
  if n > MAX_FENCE then return nil end
  return n
end
local function parse_state(v)
  local kind = string.sub(v, 1, 2)
  local fence, attempt, fp
  if kind == 'R:' then
    fence = string.match(v, '^R:(%d+):')
  elseif kind == 'P:' then
    fence, attempt, fp = string.match(v, '^P:(%d+):(%x+):(%x*)$')
  elseif kind == 'F:' then
    fence = string.match(v, '^F:(%d+)$')
  elseif kind == 'U:' then
    fence, fp = string.match(v, '^U:(%d+):(%x*)$')
  end
  if fence and valid_fence(fence) then return string.sub(kind, 1, 1), fence, attempt, fp end
  return redis.error_reply('IDEM_CORRUPT the value at ' .. KEYS[1] .. ' is not an idem state')
end
local function read_state()
  local v = redis.call('GET', KEYS[1])
  if not v then return nil end
  local kind, fence, attempt, fp = parse_state(v)
  if type(kind) == 'table' then return kind end
  return v, kind, fence, attempt, fp
end
local function leave_released(fence)
  -- `F:<fence>` for at most a second (or what the key had left): until it goes, claims take
  -- the claim script and get a greater fence; after, a fast claim's fence, the server's time,
  -- is past this one whatever clock error the store accepts.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 1000 or ttl < 0 then
    redis.call('SET', KEYS[1], 'F:' .. fence, 'PX', 1000)
  else
    redis.call('SET', KEYS[1], 'F:' .. fence, 'KEEPTTL')
  end
end
local function keep_fence(ms)
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl ~= -2 and ttl < tonumber(ms) then redis.call('PEXPIRE', KEYS[2], ms) end
end
"#;

/// A script: the preamble, with the Rust side's bounds put in, then `body`.
fn script(body: &str) -> Script {
    let preamble = PREAMBLE.replace("__MAX_FENCE__", &MAX_FENCE.to_string());
    let body = body.replace(
        "__MAX_FENCE_ERROR_US__",
        &MAX_FENCE_ERROR.as_micros().to_string(),
    );
    Script::new(&format!("{preamble}{body}"))
}

/// KEYS: state, fence. ARGV: attempt (hex), fingerprint (hex), lease ms, and `1` when a pending
/// claim of this attempt holds a fence the client proposed and the server did not confirm.
/// Returns `{'A', fence, reentrant}` | `{'R', value}` | `{'U', fence}` (held) |
/// `{'P', fence, fingerprint, pttl}`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence, attempt, fp = read_state()
if type(v) == 'table' then return v end
local refence = false
if v then
  if kind == 'R' then return {'R', v} end
  if kind == 'U' then return {'U', fence} end
  if kind == 'P' then
    if attempt ~= ARGV[1] then return {'P', fence, fp, redis.call('PTTL', KEYS[1])} end
    if ARGV[4] ~= '1' then return {'A', fence, '1'} end
    -- The fast path proposed this fence from a client's clock. Keep it (the same claim back)
    -- if it was within the store's error bound of the server's clock when the claim was set,
    -- estimated from its TTL with 1ms to spare; otherwise replace it.
    local now = redis.call('TIME')
    local set_at = tonumber(now[1]) * 1000000 + tonumber(now[2])
      - (tonumber(ARGV[3]) - redis.call('PTTL', KEYS[1])) * 1000
    if math.abs(tonumber(fence) - set_at) <= __MAX_FENCE_ERROR_US__ - 1000 then
      return {'A', fence, '1'}
    end
    refence = true
  end
end
local last = redis.call('GET', KEYS[2])
local last_fence = 0
if last then
  last_fence = valid_fence(last)
  if not last_fence then
    return redis.error_reply('IDEM_CORRUPT the fence at ' .. KEYS[2] .. ' is not a fence')
  end
end
-- A released claim's fence bounds the next one. An unconfirmed proposal does not: it is the
-- value being corrected.
if kind == 'F' then last_fence = math.max(last_fence, tonumber(fence)) end
local now = redis.call('TIME')
local next_fence = math.max(last_fence + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]))
if next_fence > MAX_FENCE then
  return redis.error_reply('IDEM_CORRUPT the fences of ' .. KEYS[1] .. ' are exhausted')
end
local fence_text = string.format('%.0f', next_fence)
local pending = 'P:' .. fence_text .. ':' .. ARGV[1] .. ':' .. ARGV[2]
if refence then
  redis.call('SET', KEYS[1], pending, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], pending, 'PX', ARGV[3])
end
redis.call('SET', KEYS[2], fence_text, 'KEEPTTL')
keep_fence(ARGV[3] * 2)
if refence then return {'A', fence_text, '1'} end
return {'A', fence_text, '0'}
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, record, retention ms, channel.
/// Returns 'OK' | 'LOST'.
///
/// Every first execution runs it, so it does only what a record needs: the claim it completes is
/// recognised by its prefix (`P:<fence>:`, unique to this claim) and one pattern for the rest,
/// without the parser; and the fence key's expiry is only read when the claim came by the fast
/// path, which makes no fence key. Any other value goes through the full parse, which tells a
/// record already written from a lost claim or a corrupt value.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v = redis.call('GET', KEYS[1])
if not v then return 'LOST' end
local ours = 'P:' .. ARGV[1] .. ':'
if string.sub(v, 1, #ours) ~= ours or not string.match(v, '^P:%d+:%x+:%x*$') then
  local kind, fence = parse_state(v)
  if type(kind) == 'table' then return kind end
  if kind == 'R' and fence == ARGV[1] then return 'OK' end
  return 'LOST'
end
-- The record outlives the claim's lease even with a shorter retention: a fresh claim may only
-- follow once the lease has run out (see store.rs on fences).
local keep = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], 'R:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', keep)
keep_fence(keep)
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 'OK'
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, channel. Returns 'OK' | 'LOST'.
///
/// A released claim leaves `F:<fence>` until its lease would have ended, so that the next claim
/// goes through the claim script and gets a greater fence.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v then return 'OK' end
if kind == 'F' and fence == ARGV[1] then return 'OK' end
if kind ~= 'P' or fence ~= ARGV[1] then return 'LOST' end
redis.call('SET', KEYS[1], 'F:' .. fence, 'KEEPTTL')
redis.call('PUBLISH', ARGV[2], fence)
return 'OK'
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, lease ms. Returns 'OK' | 'LOST'.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v or kind ~= 'P' or fence ~= ARGV[1] then return 'LOST' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
keep_fence(ARGV[2] * 2)
return 'OK'
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, channel, kind (`P`, `R` or `U`). Returns 'OK' | 'CHANGED'.
///
/// An operator's eviction of a claim, a record or a hold that is still of this kind under this
/// fence (a record or a hold keeps its claim's fence). It leaves `F:<fence>`, as a release
/// does, for at most a second (`leave_released`).
pub(crate) static EVICT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v or kind ~= ARGV[3] or fence ~= ARGV[1] then return 'CHANGED' end
leave_released(fence)
redis.call('PUBLISH', ARGV[2], fence)
return 'OK'
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, hold ms, channel. Returns 'OK' | 'LOST'.
///
/// Pending → held (an unknown outcome), for at least what the lease had left.
pub(crate) static HOLD: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence, attempt, fp = read_state()
if type(v) == 'table' then return v end
if not v then return 'LOST' end
if kind == 'U' and fence == ARGV[1] then return 'OK' end
if kind ~= 'P' or fence ~= ARGV[1] then return 'LOST' end
local keep = math.max(tonumber(ARGV[2]), redis.call('PTTL', KEYS[1]))
redis.call('SET', KEYS[1], 'U:' .. fence .. ':' .. fp, 'PX', keep)
keep_fence(keep)
redis.call('PUBLISH', ARGV[3], fence)
return 'OK'
"#,
    )
});

/// KEYS: state, fence. ARGV: fence, channel, and for a record: the record, retention ms.
/// Returns 'OK' | 'CHANGED'.
///
/// Resolves a held key: records the operator's record, or (without one) releases it as
/// `EVICT` does.
pub(crate) static RESOLVE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v or kind ~= 'U' or fence ~= ARGV[1] then return 'CHANGED' end
if ARGV[3] then
  -- Kept at least a second, as a release's marker is: a fast claim's fence after it is then
  -- past this one whatever the clock error the store accepts.
  local keep = math.max(tonumber(ARGV[4]), 1000)
  redis.call('SET', KEYS[1], 'R:' .. fence .. ':' .. ARGV[3], 'PX', keep)
  keep_fence(keep)
else
  leave_released(fence)
end
redis.call('PUBLISH', ARGV[2], fence)
return 'OK'
"#,
    )
});
