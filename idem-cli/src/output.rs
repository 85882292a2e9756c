//! What the commands print: aligned text for people, JSON for scripts.

use std::io::Write;
use std::time::Duration;

use idem_core::admin::{ActionOutcome, Cursor, KeyInfo, KeyState, KeySummary, StateCounts};
use idem_core::encode::hex;
use idem_core::{Error, Fence, Outcome};
use serde_json::{json, Value};

pub(crate) struct Output<'a> {
    out: &'a mut dyn Write,
    json: bool,
}

impl<'a> Output<'a> {
    pub(crate) fn new(out: &'a mut dyn Write, json: bool) -> Self {
        Self { out, json }
    }

    pub(crate) fn keys(&mut self, keys: &[KeySummary], next: Option<&Cursor>) -> Result<(), Error> {
        if self.json {
            let keys: Vec<Value> = keys
                .iter()
                .map(|summary| {
                    json!({
                        "key": summary.key,
                        "state": summary.state.as_str(),
                        "fence": summary.fence.0,
                        "expires_in_ms": millis(summary.expires_in),
                    })
                })
                .collect();
            return self.json_line(&json!({ "keys": keys, "next": next.map(Cursor::as_str) }));
        }
        let width = keys
            .iter()
            .map(|summary| printable(&summary.key).chars().count())
            .max()
            .unwrap_or(0)
            .max(3);
        let mut text = format!(
            "{:width$}  {:9}  {:>16}  EXPIRES IN\n",
            "KEY", "STATE", "FENCE"
        );
        for summary in keys {
            text.push_str(&format!(
                "{:width$}  {:9}  {:>16}  {}\n",
                printable(&summary.key),
                summary.state.as_str(),
                summary.fence.0,
                time_left(summary),
            ));
        }
        text.push_str(&format!("{} keys\n", keys.len()));
        if let Some(next) = next {
            text.push_str(&format!("more: list again with --after {next}\n"));
        }
        self.text(&text)
    }

    pub(crate) fn key(&mut self, info: &KeyInfo, with_value: bool) -> Result<(), Error> {
        let summary = &info.summary;
        let decoded = info.decoded_record();
        let (outcome, value, problem) = match &decoded {
            Some(Ok(record)) => (
                Some(match record.outcome {
                    Outcome::Ok => "ok",
                    Outcome::Err => "err",
                }),
                Some(record.value),
                None,
            ),
            Some(Err(err)) => (None, None, Some(err.to_string())),
            None => (None, None, None),
        };
        if self.json {
            let mut object = json!({
                "key": summary.key,
                "state": summary.state.as_str(),
                "fence": summary.fence.0,
                "expires_in_ms": millis(summary.expires_in),
                "fingerprint": hex(&info.fingerprint),
            });
            if let Some(record) = &info.record {
                object["record_bytes"] = json!(record.len());
                object["outcome"] = json!(outcome);
                object["value_bytes"] = json!(value.map(<[u8]>::len));
                if let Some(problem) = &problem {
                    object["corrupt"] = json!(problem);
                }
                if with_value {
                    object["value"] = value.map_or(Value::Null, json_value);
                }
            }
            return self.json_line(&object);
        }
        let mut text = format!(
            "key          {}\nstate        {}\nfence        {}\n{:12} {}\nfingerprint  {}\n",
            printable(&summary.key),
            summary.state,
            summary.fence.0,
            match summary.state {
                KeyState::InFlight => "lease left",
                KeyState::Unknown => "held for",
                _ => "expires in",
            },
            time_left(summary),
            if info.fingerprint.is_empty() {
                "(none)".to_owned()
            } else {
                hex(&info.fingerprint)
            },
        );
        if let Some(record) = &info.record {
            if let Some(problem) = &problem {
                text.push_str(&format!(
                    "record       {} bytes, corrupt: {problem}\n",
                    record.len()
                ));
            }
            if let (Some(outcome), Some(value)) = (outcome, value) {
                text.push_str(&format!(
                    "outcome      {outcome}\nvalue        {} bytes\n",
                    value.len()
                ));
                if with_value {
                    text.push_str(&String::from_utf8_lossy(value));
                    text.push('\n');
                }
            }
        }
        self.text(&text)
    }

    pub(crate) fn absent(&mut self, key: &str) -> Result<(), Error> {
        if self.json {
            return self.json_line(&json!({ "key": key, "state": null }));
        }
        let key = printable(key);
        self.text(&format!(
            "{key}: absent (never claimed, released, evicted, or its lease or retention lapsed)\n"
        ))
    }

    pub(crate) fn evicted(
        &mut self,
        key: &str,
        (fence, state): (Fence, KeyState),
        outcome: ActionOutcome,
    ) -> Result<(), Error> {
        let evicted = outcome == ActionOutcome::Applied;
        if self.json {
            return self.json_line(&json!({
                "key": key,
                "fence": fence.0,
                "state": state.as_str(),
                "evicted": evicted,
            }));
        }
        let key = printable(key);
        self.text(&if evicted {
            format!("evicted {key} ({state}, fence {fence}): the next delivery runs the body\n")
        } else {
            format!(
                "not evicted: {key} is no longer {state} under fence {fence} (it changed since it \
                 was read); show it again\n"
            )
        })
    }

    pub(crate) fn not_held(&mut self, info: &KeyInfo, fence: Fence) -> Result<(), Error> {
        let summary = &info.summary;
        if self.json {
            return self.json_line(&json!({
                "key": summary.key,
                "state": summary.state.as_str(),
                "fence": summary.fence.0,
                "resolved": false,
            }));
        }
        let why = if summary.state == KeyState::Unknown {
            format!(
                "it is held under fence {}, not {fence}: it changed since it was read",
                summary.fence
            )
        } else {
            format!(
                "it is {}, not held with an unknown outcome; only a held key can be resolved (a key \
                 in flight may still be recorded by its holder: wait, or evict it once the holder \
                 is known to be gone)",
                summary.state
            )
        };
        self.text(&format!(
            "not resolved: {}: {why}\n",
            printable(&summary.key)
        ))
    }

    pub(crate) fn resolved(
        &mut self,
        key: &str,
        fence: Fence,
        released: bool,
        outcome: ActionOutcome,
    ) -> Result<(), Error> {
        let resolved = outcome == ActionOutcome::Applied;
        if self.json {
            return self.json_line(&json!({
                "key": key,
                "fence": fence.0,
                "resolved": resolved,
                "resolution": if released { "released" } else { "recorded" },
            }));
        }
        let key = printable(key);
        self.text(&match (resolved, released) {
            (true, true) => {
                format!("released {key} (fence {fence}): the next delivery runs the body\n")
            }
            (true, false) => {
                format!("recorded {key} (fence {fence}): every delivery replays the record\n")
            }
            (false, _) => format!(
                "not resolved: {key} changed since it was read (resolved, evicted or lapsed); \
                 show it again\n"
            ),
        })
    }

    pub(crate) fn counts(&mut self, counts: &StateCounts) -> Result<(), Error> {
        if self.json {
            let mut object = json!({});
            for state in KeyState::ALL {
                object[state.as_str()] = json!(counts.of(state));
            }
            return self.json_line(&object);
        }
        let mut text = String::new();
        for state in KeyState::ALL {
            text.push_str(&format!("{:10} {}\n", state.as_str(), counts.of(state)));
        }
        self.text(&text)
    }

    pub(crate) fn pong(&mut self, took: Duration) -> Result<(), Error> {
        if self.json {
            return self.json_line(&json!({ "ok": true, "took_us": took.as_micros() }));
        }
        self.text(&format!("ok: the store answered in {took:.1?}\n"))
    }

    fn json_line(&mut self, value: &Value) -> Result<(), Error> {
        self.text(&format!("{value}\n"))
    }

    fn text(&mut self, text: &str) -> Result<(), Error> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|err| Error::invalid_option(format!("cannot write the output: {err}")))
    }
}

/// A key as text a terminal shows as it is: control characters escaped, so that no key can
/// move the cursor or forge a line of the output.
fn printable(key: &str) -> std::borrow::Cow<'_, str> {
    // Bidirectional overrides and isolates reorder what follows them on screen.
    let misleading = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if key.chars().any(misleading) {
        std::borrow::Cow::Owned(key.escape_debug().to_string())
    } else {
        std::borrow::Cow::Borrowed(key)
    }
}

/// A recorded value as JSON: itself when it parses, otherwise its text.
fn json_value(value: &[u8]) -> Value {
    serde_json::from_slice(value)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(value).into_owned()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a key has left: "until resolved" for an unknown outcome held so (for
/// [`MAX_DURATION`](idem_core::MAX_DURATION)).
fn time_left(summary: &KeySummary) -> String {
    if summary.state == KeyState::Unknown && summary.expires_in > idem_core::MAX_DURATION / 2 {
        "until resolved".to_owned()
    } else {
        human(summary.expires_in)
    }
}

/// A duration to the second (to the millisecond below one), as `1day 2h 3m 4s`.
fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(90_500)), "1m 30s");
        assert_eq!(human(Duration::from_secs(86_400 + 7_200)), "1day 2h");
    }

    #[test]
    fn keys_cannot_drive_the_terminal() {
        assert_eq!(printable("idem:ns:a b"), "idem:ns:a b");
        // A real newline and a written one print differently.
        assert_ne!(printable("a\nb"), printable("a\\nb"));
        assert_eq!(
            printable("pay\u{202e}lanoisivorp"),
            "pay\\u{202e}lanoisivorp"
        );
        assert_eq!(
            printable("idem:ns:x\u{1b}[31mRED\rFAKE\n"),
            "idem:ns:x\\u{1b}[31mRED\\rFAKE\\n"
        );
    }

    #[test]
    fn values_print_as_json_when_they_are() {
        assert_eq!(json_value(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(json_value(b"not json"), json!("not json"));
    }
}
