//! The value at a state key, as the scripts write it:
//!
//! ```text
//! P:<fence>:<attempt, hex>:<fingerprint, hex>    a pending claim (expires with its lease)
//! R:<fence>:<record bytes>                       a completed record (expires with its retention)
//! ```

use idem_core::Fence;

/// A decoded state value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum State<'a> {
    Pending { fence: Fence },
    Completed { fence: Fence, record: &'a [u8] },
}

/// Decodes a state value; `None` when it is not one of ours.
pub(crate) fn parse(value: &[u8]) -> Option<State<'_>> {
    let (kind, rest) = (value.get(..2)?, value.get(2..)?);
    let colon = rest.iter().position(|&b| b == b':')?;
    let fence = parse_fence(&rest[..colon])?;
    let after = &rest[colon + 1..];
    match kind {
        b"R:" => Some(State::Completed {
            fence,
            record: after,
        }),
        b"P:" => Some(State::Pending { fence }),
        _ => None,
    }
}

/// Parses decimal fence digits.
pub(crate) fn parse_fence(digits: &[u8]) -> Option<Fence> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(Fence)
}

/// Lowercase hex, as the scripts match it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Decodes lowercase hex; `None` on anything else.
pub(crate) fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
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
            Some(State::Pending { fence: Fence(9) })
        );
        for garbage in [
            &b""[..],
            b"R",
            b"R:",
            b"R:x:",
            b"Q:1:",
            b"P::a:",
            b"R:99999999999999999999999:",
        ] {
            assert_eq!(parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(hex(&bytes).as_bytes()).unwrap(), bytes);
        assert_eq!(unhex(b"abc"), None);
        assert_eq!(unhex(b"zz"), None);
    }
}
