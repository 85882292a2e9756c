//! What a listing selects, and where it resumes.

use super::KeyState;
use crate::key::key_head;
use crate::Error;

/// The most keys one page may ask for.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// The keys [`StoreAdmin::list`](super::StoreAdmin::list) selects: those starting with a
/// prefix (all keys of one namespace, or any text), of one state, a page at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    head: String,
    namespace: bool,
    state: Option<KeyState>,
    limit: usize,
    after: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl ListQuery {
    /// Every key, 100 a page.
    pub fn new() -> Self {
        Self {
            head: String::new(),
            namespace: false,
            state: None,
            limit: 100,
            after: None,
        }
    }

    /// Only the keys of `namespace` under the key prefix `key_prefix` (the runtime's is
    /// [`DEFAULT_KEY_PREFIX`](crate::DEFAULT_KEY_PREFIX) unless it was changed), long keys and
    /// keys scoped to a caller included.
    pub fn in_namespace(mut self, key_prefix: &str, namespace: &str) -> Result<Self, Error> {
        self.head = key_head(key_prefix, namespace)?;
        self.namespace = true;
        Ok(self)
    }

    /// Only the store keys that start with `text`.
    #[must_use]
    pub fn starting_with(mut self, text: impl Into<String>) -> Self {
        self.head = text.into();
        self.namespace = false;
        self
    }

    /// Only keys in `state`.
    #[must_use]
    pub fn with_state(mut self, state: KeyState) -> Self {
        self.state = Some(state);
        self
    }

    /// At most `limit` keys a page (1 to [`MAX_LIST_LIMIT`]; other values are brought into that
    /// range).
    #[must_use]
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, MAX_LIST_LIMIT);
        self
    }

    /// The page after the one that returned `cursor`.
    #[must_use]
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// The text every selected key starts with (empty for all keys).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// True when the query selects a namespace: a selected key continues after
    /// [`head`](Self::head) with `:` or `#`.
    pub fn is_namespace(&self) -> bool {
        self.namespace
    }

    /// The state selected, if any.
    pub fn state(&self) -> Option<KeyState> {
        self.state
    }

    /// The page size.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Where the page starts: `None` for the first page.
    pub fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }

    /// True when `key`, in `state`, is selected (the cursor aside): for stores that filter
    /// keys themselves.
    pub fn selects(&self, key: &str, state: KeyState) -> bool {
        let Some(rest) = key.strip_prefix(self.head.as_str()) else {
            return false;
        };
        let in_namespace = !self.namespace || rest.starts_with([':', '#']);
        in_namespace && self.state.is_none_or(|wanted| wanted == state)
    }

    /// The byte range selected keys fall in, for stores that keep keys in order: from
    /// [`head`](Self::head) (inclusive) to the end (exclusive; `None` when unbounded).
    pub fn key_range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let start = self.head.as_bytes().to_vec();
        let mut end = start.clone();
        // The first text after every text starting with `head`: its last byte below 0xff
        // incremented, the rest dropped.
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return (start, Some(end));
            }
        }
        (start, None)
    }
}

/// Where a listing resumes: opaque text a store made (safe to print, and to pass back from a
/// command line).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// A cursor, for store implementations.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::store_key;

    #[test]
    fn a_namespace_selects_its_plain_long_and_scoped_keys_only() {
        let query = ListQuery::new().in_namespace("idem:", "charge").unwrap();
        let long = "k".repeat(300);
        for key in [
            store_key("idem:", "charge", "order-1").unwrap(),
            store_key("idem:", "charge", &long).unwrap(),
            crate::key::scoped_store_key("idem:", "charge", Some("ab12"), "x").unwrap(),
        ] {
            assert!(query.selects(&key, KeyState::Completed), "{key}");
        }
        for key in [
            store_key("idem:", "charges", "order-1").unwrap(),
            store_key("other:", "charge", "order-1").unwrap(),
            store_key("idem:", "refund", "charge").unwrap(),
        ] {
            assert!(!query.selects(&key, KeyState::Completed), "{key}");
        }
        let inflight = query.with_state(KeyState::InFlight);
        let key = store_key("idem:", "charge", "order-1").unwrap();
        assert!(inflight.selects(&key, KeyState::InFlight));
        assert!(!inflight.selects(&key, KeyState::Completed));
    }

    #[test]
    fn a_prefix_without_a_trailing_colon_gets_one_as_keys_do() {
        let query = ListQuery::new().in_namespace("app", "charge").unwrap();
        assert_eq!(query.head(), "app:charge");
        assert!(query.selects(
            &store_key("app", "charge", "1").unwrap(),
            KeyState::InFlight
        ));
        assert!(ListQuery::new().in_namespace("idem:", "a:b").is_err());
    }

    #[test]
    fn key_ranges_end_after_every_key_with_the_head() {
        assert_eq!(
            ListQuery::new().starting_with("ab").key_range(),
            (b"ab".to_vec(), Some(b"ac".to_vec()))
        );
        assert_eq!(ListQuery::new().key_range(), (Vec::new(), None));
        let query = ListQuery::new().starting_with("a\u{7f}");
        assert_eq!(query.key_range().1, Some(b"a\x80".to_vec()));
    }

    #[test]
    fn limits_are_kept_in_range() {
        assert_eq!(ListQuery::new().with_limit(0).limit(), 1);
        assert_eq!(
            ListQuery::new().with_limit(usize::MAX).limit(),
            MAX_LIST_LIMIT
        );
    }
}
