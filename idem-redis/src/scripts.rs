//! The server-side state transitions, one Lua script each, so that every transition is atomic
//! on the server and single-slot (all keys of one idempotency key share a hash tag).
//!
//! Every script reads and validates before its first write, so an error (a value of the wrong
//! type or shape at our keys) never leaves a partial change. Lease expiry is the server's: a
//! pending claim is a key with a `PX` expiry, so a lapsed lease is simply an absent key.
//!
//! Fencing tokens are `max(last + 1, server time in µs)`: strictly increasing while the fence key
//! lives (it is kept at least as long as the claim and the record), and still increasing after
//! it expired as long as the server's clock does not go back.

use std::sync::LazyLock;

use redis::Script;

/// The shared preamble: parse a state value, or fail with `IDEM_CORRUPT` before any write.
macro_rules! with_state_parser {
    ($body:literal) => {
        concat!(
            r#"
local function parse_state(v)
  local kind = string.sub(v, 1, 2)
  if kind == 'R:' then
    local fence = string.match(v, '^R:(%d+):')
    if fence then return 'R', fence end
  elseif kind == 'P:' then
    local fence, attempt, fp = string.match(v, '^P:(%d+):(%x+):(%x*)$')
    if fence then return 'P', fence, attempt, fp end
  end
  return redis.error_reply('IDEM_CORRUPT the value at ' .. KEYS[1] .. ' is not an idem state')
end
local function read_state()
  local v = redis.call('GET', KEYS[1])
  if not v then return nil end
  local kind, fence, attempt, fp = parse_state(v)
  if type(kind) == 'table' then return kind end
  return v, kind, fence, attempt, fp
end
local function keep_fence(ms)
  local ttl = redis.call('PTTL', KEYS[2])
  if ttl < tonumber(ms) then redis.call('PEXPIRE', KEYS[2], ms) end
end
"#,
            $body
        )
    };
}

/// KEYS: state, fence. ARGV: attempt (hex), fingerprint (hex), lease ms.
/// Returns `{'A', fence, reentrant}` | `{'R', value}` | `{'P', fence, fingerprint, pttl}`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_state_parser!(
        r#"
local v, kind, fence, attempt, fp = read_state()
if type(v) == 'table' then return v end
if v then
  if kind == 'R' then return {'R', v} end
  if attempt == ARGV[1] then return {'A', fence, '1'} end
  return {'P', fence, fp, redis.call('PTTL', KEYS[1])}
end
local last = redis.call('GET', KEYS[2])
local last_fence = 0
if last then
  last_fence = tonumber(last)
  if not last_fence then
    return redis.error_reply('IDEM_CORRUPT the fence at ' .. KEYS[2] .. ' is not a number')
  end
end
local now = redis.call('TIME')
local next_fence = math.max(last_fence + 1, tonumber(now[1]) * 1000000 + tonumber(now[2]))
local fence_text = string.format('%.0f', next_fence)
redis.call('SET', KEYS[1], 'P:' .. fence_text .. ':' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], fence_text, 'KEEPTTL')
keep_fence(ARGV[3] * 2)
return {'A', fence_text, '0'}
"#
    ))
});

/// KEYS: state, fence. ARGV: fence, record, retention ms, channel.
/// Returns 'OK' | 'LOST'.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_state_parser!(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v or fence ~= ARGV[1] then return 'LOST' end
if kind == 'R' then return 'OK' end
redis.call('SET', KEYS[1], 'R:' .. fence .. ':' .. ARGV[2], 'PX', ARGV[3])
keep_fence(ARGV[3])
redis.call('PUBLISH', ARGV[4], fence)
return 'OK'
"#
    ))
});

/// KEYS: state, fence. ARGV: fence, channel. Returns 'OK' | 'LOST'.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_state_parser!(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v then return 'OK' end
if kind ~= 'P' or fence ~= ARGV[1] then return 'LOST' end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], fence)
return 'OK'
"#
    ))
});

/// KEYS: state, fence. ARGV: fence, lease ms. Returns 'OK' | 'LOST'.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(with_state_parser!(
        r#"
local v, kind, fence = read_state()
if type(v) == 'table' then return v end
if not v or kind ~= 'P' or fence ~= ARGV[1] then return 'LOST' end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
keep_fence(ARGV[2] * 2)
return 'OK'
"#
    ))
});
