//! The operator's side of the PostgreSQL store.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::admin::{
    report, timed_ping, Action, ActionOutcome, Cursor, KeyInfo, KeyPage, KeyState, KeySummary,
    ListQuery, Resolution, StateCounts, StoreAdmin,
};
use idem_core::encode::{hex, unhex};
use idem_core::{Error, Fence, MAX_DURATION};
use sqlx::postgres::PgRow;

use crate::store::{column, fence_value, millis, store_error, PostgresStore};

/// Lists keys in their byte order, on the primary key's index: a listing of a namespace reads
/// that namespace's keys only. A listing by state alone reads keys in order until it has a
/// page (the table has no index by state, which would keep a record's update from being a HOT
/// one on every first execution). A cursor is the hex of the last key of a page. Rows that an
/// open transaction wrote are not seen until it commits, and a row it holds locked is not
/// evicted.
#[async_trait]
impl StoreAdmin for PostgresStore {
    async fn inspect(&self, key: &str) -> Result<Option<KeyInfo>, Error> {
        let row = sqlx::query(self.sql.inspect.clone())
            .bind(key.as_bytes())
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| store_error("inspect", &err, false))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state: i16 = column(key, &row, 0)?;
        let fence = fence_of(key, &row, 1)?;
        let left = time_left(key, &row, 4)?;
        let live: bool = column(key, &row, 5)?;
        match state {
            0..=2 if !live => Ok(None),
            2 => Ok(Some(KeyInfo::unknown(
                key.to_owned(),
                fence,
                left,
                column(key, &row, 2)?,
            ))),
            0 => Ok(Some(KeyInfo::in_flight(
                key.to_owned(),
                fence,
                left,
                column(key, &row, 2)?,
            ))),
            1 => {
                let record: Option<Vec<u8>> = column(key, &row, 3)?;
                let record = record
                    .ok_or_else(|| Error::corrupt(key, "it is completed but holds no record"))?;
                Ok(Some(KeyInfo::completed(
                    key.to_owned(),
                    fence,
                    left,
                    record,
                )))
            }
            other => Err(Error::corrupt(
                key,
                format!(
                    "its state is {other}, none of 0 (claimed), 1 (completed) and 2 (held with an \
                 unknown outcome)"
                ),
            )),
        }
    }

    async fn list(&self, query: &ListQuery) -> Result<KeyPage, Error> {
        let (head, end) = query.key_range();
        let start = match query.cursor() {
            // The least key after the cursor's: the cursor's key and a NUL byte.
            Some(cursor) => {
                let mut after = unhex(cursor.as_str().as_bytes()).ok_or_else(|| {
                    Error::invalid_option(format!(
                        "`{cursor}` is not a cursor of this store (the hex of a key)"
                    ))
                })?;
                after.push(0);
                after.max(head)
            }
            None => head,
        };
        let separator = query
            .is_namespace()
            .then(|| i32::try_from(query.head().len() + 1).unwrap_or(i32::MAX));
        let state = match query.state() {
            None => None,
            Some(state) => Some(state_value(state).ok_or_else(|| {
                Error::invalid_option(format!("this store cannot list keys that are {state}"))
            })?),
        };
        let limit = query.limit();
        let rows = sqlx::query(self.sql.list.clone())
            .bind(start)
            .bind(end)
            .bind(separator)
            .bind(state)
            // One more than a page, to know whether another follows.
            .bind(i64::try_from(limit + 1).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|err| store_error("list", &err, false))?;
        // The page is the first `limit` rows (the one after says whether another follows); a
        // row left out still moves the cursor past it.
        let page = &rows[..rows.len().min(limit)];
        let mut keys = Vec::with_capacity(page.len());
        for row in page {
            keys.extend(summary(row)?);
        }
        let next = match page.last() {
            Some(last) if rows.len() > limit => {
                let key: Vec<u8> = column("(listed key)", last, 0)?;
                Some(Cursor::new(hex(&key)))
            }
            _ => None,
        };
        Ok(KeyPage::new(keys, next))
    }

    async fn count(&self) -> Result<StateCounts, Error> {
        let row = sqlx::query(self.sql.count.clone())
            .fetch_one(&self.pool)
            .await
            .map_err(|err| store_error("count", &err, false))?;
        let count =
            |index| column::<i64>("(count)", &row, index).map(|n| u64::try_from(n).unwrap_or(0));
        let mut counts = StateCounts::new();
        counts.add(KeyState::InFlight, count(0)?);
        counts.add(KeyState::Unknown, count(1)?);
        counts.add(KeyState::Completed, count(2)?);
        Ok(counts)
    }

    async fn evict(
        &self,
        key: &str,
        fence: Fence,
        state: KeyState,
    ) -> Result<ActionOutcome, Error> {
        let (Ok(fence_value), Some(state)) = (fence_value(key, fence), state_value(state)) else {
            return Ok(ActionOutcome::Changed);
        };
        let deleted = sqlx::query(self.sql.evict.clone())
            .bind(key.as_bytes())
            .bind(fence_value)
            .bind(state)
            .execute(&self.pool)
            .await
            .map_err(|err| store_error("evict", &err, true))?;
        Ok(applied(
            deleted.rows_affected(),
            Action::Evicted,
            key,
            fence,
        ))
    }

    async fn resolve(
        &self,
        key: &str,
        fence: Fence,
        resolution: Resolution,
    ) -> Result<ActionOutcome, Error> {
        resolution.check()?;
        let Ok(fence_value) = fence_value(key, fence) else {
            return Ok(ActionOutcome::Changed);
        };
        let (statement, action) = match &resolution {
            Resolution::Release => (self.sql.resolve_release.clone(), Action::Released),
            Resolution::Record { .. } => (self.sql.resolve_record.clone(), Action::Recorded),
            other => {
                return Err(Error::invalid_option(format!(
                    "this store cannot resolve a key with {other:?}"
                )))
            }
        };
        let mut query = sqlx::query(statement)
            .bind(key.as_bytes())
            .bind(fence_value);
        if let Resolution::Record { record, retention } = resolution {
            query = query.bind(record).bind(millis(retention.min(MAX_DURATION)));
        }
        let changed = query
            .execute(&self.pool)
            .await
            .map_err(|err| store_error("resolve", &err, true))?;
        Ok(applied(changed.rows_affected(), action, key, fence))
    }

    async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        timed_ping(timeout, async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(|err| store_error("ping", &err, false))
        })
        .await
    }
}

/// The `state` column of a key in `state`.
fn state_value(state: KeyState) -> Option<i16> {
    match state {
        KeyState::InFlight => Some(0),
        KeyState::Completed => Some(1),
        KeyState::Unknown => Some(2),
        _ => None,
    }
}

/// An action's outcome from the rows it changed, reported when it applied.
fn applied(rows: u64, action: Action, key: &str, fence: Fence) -> ActionOutcome {
    if rows == 1 {
        report(action, key, fence);
        ActionOutcome::Applied
    } else {
        ActionOutcome::Changed
    }
}

/// A listed row: key, state, fence, time left. A key that is not UTF-8 is no key idem wrote
/// (its keys are text): it is left out, as Redis listings leave out values that are not idem's,
/// rather than stop every listing at it.
fn summary(row: &PgRow) -> Result<Option<KeySummary>, Error> {
    let key: Vec<u8> = column("(listed key)", row, 0)?;
    let Ok(key) = String::from_utf8(key) else {
        return Ok(None);
    };
    let state = match column::<i16>(&key, row, 1)? {
        0 => KeyState::InFlight,
        2 => KeyState::Unknown,
        _ => KeyState::Completed,
    };
    let fence = fence_of(&key, row, 2)?;
    let left = time_left(&key, row, 3)?;
    Ok(Some(KeySummary::new(key, state, fence, left)))
}

fn fence_of(key: &str, row: &PgRow, index: usize) -> Result<Fence, Error> {
    let fence: i64 = column(key, row, index)?;
    u64::try_from(fence)
        .map(Fence)
        .map_err(|_| Error::corrupt(key, format!("its fence {fence} is not positive")))
}

fn time_left(key: &str, row: &PgRow, index: usize) -> Result<Duration, Error> {
    let ms: i64 = column(key, row, index)?;
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}
