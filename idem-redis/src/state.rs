//! The value at a state key, as the scripts write it:
//!
//! ```text
//! P:<fence>:<attempt, hex>:<fingerprint, hex>    a pending claim (expires with its lease)
//! R:<fence>:<record bytes>                       a completed record (expires with its retention)
//! U:<fence>:<fingerprint, hex>                   an unknown outcome, held (expires with its hold)
//! F:<fence>                                      a released claim (expires when its lease would)
//! ```

use idem_core::Fence;

/// A decoded state value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum State<'a> {
    Pending {
        fence: Fence,
        attempt: &'a [u8],
        /// The request fingerprint, in hex.
        fingerprint: &'a [u8],
    },
    Completed {
        fence: Fence,
        record: &'a [u8],
    },
    Released {
        fence: Fence,
    },
    Held {
        fence: Fence,
        /// The request fingerprint, in hex.
        fingerprint: &'a [u8],
    },
}

/// Decodes a state value; `None` when it is not one of ours.
pub(crate) fn parse(value: &[u8]) -> Option<State<'_>> {
    let (kind, rest) = (value.get(..2)?, value.get(2..)?);
    if kind == b"F:" {
        return Some(State::Released {
            fence: parse_fence(rest)?,
        });
    }
    let colon = rest.iter().position(|&b| b == b':')?;
    let fence = parse_fence(&rest[..colon])?;
    let after = &rest[colon + 1..];
    match kind {
        b"R:" => Some(State::Completed {
            fence,
            record: after,
        }),
        b"U:" => after
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then_some(State::Held {
                fence,
                fingerprint: after,
            }),
        b"P:" => {
            let colon = after.iter().position(|&b| b == b':')?;
            let (attempt, fingerprint) = (&after[..colon], &after[colon + 1..]);
            let hex = |part: &[u8]| part.iter().all(u8::is_ascii_hexdigit);
            (!attempt.is_empty() && hex(attempt) && hex(fingerprint)).then_some(State::Pending {
                fence,
                attempt,
                fingerprint,
            })
        }
        _ => None,
    }
}

/// What the head of a state value (its first bytes, as `GETRANGE` reads them for a listing)
/// says: a claim, a record or a released claim, and its fence. `None` when it is not one of
/// ours.
pub(crate) fn peek(head: &[u8]) -> Option<(u8, Fence)> {
    let (kind, rest) = (*head.first()?, head.get(2..)?);
    if head.get(1) != Some(&b':') || !matches!(kind, b'P' | b'R' | b'U' | b'F') {
        return None;
    }
    let digits = match rest.iter().position(|&b| b == b':') {
        Some(end) if kind != b'F' => &rest[..end],
        None if kind == b'F' => rest,
        _ => return None,
    };
    Some((kind, parse_fence(digits)?))
}

/// The greatest fence the store uses: the scripts compute with Lua's doubles, exact up to 2^53
/// (µs since 1970 stay below it until the year 2255). The scripts get it from here, so both
/// sides accept exactly the same fences: 1 to 16 decimal digits without a leading zero, at most
/// this.
pub(crate) const MAX_FENCE: u64 = (1 << 53) - 1;

/// Parses decimal fence digits.
pub(crate) fn parse_fence(digits: &[u8]) -> Option<Fence> {
    let leading_zero = digits.len() > 1 && digits[0] == b'0';
    if digits.is_empty()
        || digits.len() > 16
        || leading_zero
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let fence: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (fence <= MAX_FENCE).then_some(Fence(fence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_states_and_rejects_garbage() {
        assert_eq!(
            parse(b"R:17:\x00rec:ord"),
            Some(State::Completed {
                fence: Fence(17),
                record: b"\x00rec:ord"
            })
        );
        assert_eq!(
            parse(b"P:9:abcd:"),
            Some(State::Pending {
                fence: Fence(9),
                attempt: b"abcd",
                fingerprint: b""
            })
        );
        assert_eq!(parse(b"F:12"), Some(State::Released { fence: Fence(12) }));
        assert_eq!(
            parse(b"U:12:ab"),
            Some(State::Held {
                fence: Fence(12),
                fingerprint: b"ab"
            })
        );
        assert_eq!(parse(b"U:12:xy"), None);
        assert_eq!(parse(b"U:12"), None);
        assert_eq!(
            parse(b"F:9007199254740991"),
            Some(State::Released {
                fence: Fence(MAX_FENCE)
            })
        );
        for garbage in [
            &b""[..],
            b"R",
            b"R:",
            b"R:x:",
            b"Q:1:",
            b"P::a:",
            b"P:1:a",
            b"P:1::",
            b"P:1:xyz:",
            b"P:1:ab:zz",
            b"F:",
            b"F:1:",
            b"R:99999999999999999999999:",
            b"R:9007199254740992:",
            b"F:12345678901234567",
            b"F:012",
        ] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn peeks_at_a_head_cut_anywhere_after_the_fence() {
        assert_eq!(peek(b"R:17:\x00rec"), Some((b'R', Fence(17))));
        assert_eq!(peek(b"R:17:"), Some((b'R', Fence(17))));
        assert_eq!(peek(b"P:9:ab"), Some((b'P', Fence(9))));
        assert_eq!(peek(b"F:12"), Some((b'F', Fence(12))));
        assert_eq!(peek(b"U:12:"), Some((b'U', Fence(12))));
        for garbage in [
            &b""[..],
            b"R",
            b"R:",
            b"R:17",
            b"Q:1:",
            b"F:1:",
            b"R:x:",
            b"P:01:a",
        ] {
            assert_eq!(peek(garbage), None, "{garbage:?}");
        }
    }
}
