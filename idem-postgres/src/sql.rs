//! The store's SQL, written once for a validated table name.

use idem_core::Error;
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

/// The table name when none is chosen.
pub const DEFAULT_TABLE: &str = "idem_records";

/// The schema file's text, with the default names.
const SCHEMA: &str = include_str!("../schema.sql");

/// Longest table name part: PostgreSQL's 63-byte identifiers, less the longest suffix added
/// (`_expires_at`).
const MAX_TABLE_PART: usize = 63 - "_expires_at".len();

/// Every statement the store runs, for one table.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// The table as given: `name` or `schema.name`.
    pub(crate) table: String,
    pub(crate) schema: String,
    pub(crate) claim: SqlStr,
    pub(crate) claim_in_transaction: SqlStr,
    pub(crate) take_over: SqlStr,
    pub(crate) wait_in_transaction: SqlStr,
    pub(crate) extend_in_transaction: SqlStr,
    pub(crate) complete: SqlStr,
    pub(crate) complete_in_transaction: SqlStr,
    pub(crate) release: SqlStr,
    pub(crate) renew: SqlStr,
    pub(crate) state: SqlStr,
    pub(crate) reap: SqlStr,
    pub(crate) inspect: SqlStr,
    pub(crate) list: SqlStr,
    pub(crate) count: SqlStr,
    pub(crate) evict: SqlStr,
    pub(crate) hold: SqlStr,
    pub(crate) hold_in_transaction: SqlStr,
    pub(crate) resolve_release: SqlStr,
    pub(crate) resolve_record: SqlStr,
}

/// PostgreSQL's reserved key words (its manual's appendix C, "reserved" and "reserved (can be
/// function or type)", `system_user` from version 16), which cannot name a table unquoted.
/// Sorted, for the binary search.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Checks a table name: a plain identifier (lowercase letters, digits, `_`, not starting with a
/// digit), optionally qualified by a schema of the same form.
fn check_table(table: &str) -> Result<(Option<&str>, &str), Error> {
    let refuse = |why: &str| {
        Err(Error::invalid_option(format!(
            "the table name `{table}` {why}; use a plain identifier such as `idem_records` or \
             `billing.idem_records` (lowercase letters, digits and `_`, not starting with a \
             digit, at most {MAX_TABLE_PART} bytes each)"
        )))
    };
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    for part in schema.into_iter().chain([name]) {
        let mut chars = part.chars();
        let plain = match chars.next() {
            Some(first) => {
                (first.is_ascii_lowercase() || first == '_')
                    && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }
            None => false,
        };
        if !plain {
            return refuse("is not a plain identifier");
        }
        if part.len() > MAX_TABLE_PART {
            return refuse("is too long");
        }
        if RESERVED.binary_search(&part).is_ok() {
            return refuse(&format!("uses `{part}`, a word PostgreSQL reserves"));
        }
    }
    Ok((schema, name))
}

impl Statements {
    pub(crate) fn for_table(table: &str) -> Result<Self, Error> {
        let (schema_name, name) = check_table(table)?;
        Ok(Self::build(table, schema_name, name))
    }

    /// The statements of the default table.
    pub(crate) fn default_table() -> Self {
        Self::build(DEFAULT_TABLE, None, DEFAULT_TABLE)
    }

    /// The statements of a checked table name.
    fn build(table: &str, schema_name: Option<&str>, name: &str) -> Self {
        let qualified = |suffix: &str| match schema_name {
            Some(schema) => format!("{schema}.{name}{suffix}"),
            None => format!("{name}{suffix}"),
        };
        let (t, sequence) = (qualified(""), qualified("_fence"));
        // The schema file with this table's names (the index name cannot be qualified).
        let schema = SCHEMA
            .replace("idem_records_expires_at", "\u{1}")
            .replace("idem_records_fence", "\u{2}")
            .replace("idem_records", &t)
            .replace('\u{1}', &format!("{name}_expires_at"))
            .replace('\u{2}', &sequence);
        let sql = |text: String| AssertSqlSafe(text).into_sql_str();

        // $1 key, $2 attempt, $3 fingerprint, $4 lease (ms). A claim takes an absent key, a
        // lapsed claim or an expired record; otherwise the row is read back in the same
        // statement (from its snapshot: a row committed just after it is not seen, and the
        // caller asks again).
        // A lapsed claim or an expired record of idem's own (another state or fence is not
        // idem's row: it is reported corrupt, never overwritten).
        // A held unknown outcome (state 2) lapses at `lease_until`, as a claim does.
        let claimable =
            "r.fence > 0 AND ((r.state IN (0, 2) AND r.lease_until <= statement_timestamp()) \
             OR (r.state = 1 AND r.expires_at <= statement_timestamp()))";
        let new_row = format!(
            "$1, 0, nextval('{sequence}'), $2, $3, NULL, \
             statement_timestamp() + $4::bigint * interval '1 millisecond', \
             statement_timestamp() + $4::bigint * interval '1 millisecond'"
        );
        // In a transaction, $6 is the retention (ms): the pending row gets the expiry its
        // record will keep, so that recording it changes no indexed column (a HOT update).
        let new_row_in_transaction = format!(
            "$1, 0, nextval('{sequence}'), $2, $3, NULL, \
             statement_timestamp() + $4::bigint * interval '1 millisecond', \
             statement_timestamp() + ($4::bigint + $6::bigint) * interval '1 millisecond'"
        );
        // The key's row as this statement's snapshot has it, with the columns below.
        let row_columns = "r.state, r.fence, r.attempt, r.fingerprint, r.record, \
               floor(extract(epoch FROM (r.lease_until - statement_timestamp())) * 1000)::bigint \
                 AS remaining_ms, \
               r.expires_at > statement_timestamp() AS live";
        // Columns: state (-1 when this statement claimed the key), fence, attempt,
        // fingerprint, record, lease remaining (ms), whether a record is still live.
        let claimed_or_found = format!(
            "SELECT -1::smallint AS state, fence, NULL::bytea AS attempt, \
               NULL::bytea AS fingerprint, NULL::bytea AS record, 0::bigint AS remaining_ms, \
               true AS live \
             FROM claimed \
             UNION ALL \
             SELECT {row_columns} \
             FROM {t} r WHERE r.key = $1 AND NOT EXISTS (SELECT 1 FROM claimed)"
        );
        // $5 (ms, as text): how long this statement waits on a row lock, that of a claim an
        // open transaction holds, before it answers (the runtime then waits as for any claim
        // in progress, up to its patience). Set first: the insert reads its row from `bound`.
        let claim = format!(
            "WITH bound AS MATERIALIZED (SELECT set_config('lock_timeout', $5::text, true)), \
             claimed AS (INSERT INTO {t} AS r (key, state, fence, attempt, fingerprint, \
               record, lease_until, expires_at) SELECT {new_row} FROM bound \
               ON CONFLICT (key) DO UPDATE SET state = 0, fence = EXCLUDED.fence, \
                 attempt = EXCLUDED.attempt, fingerprint = EXCLUDED.fingerprint, record = NULL, \
                 lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at \
               WHERE {claimable} RETURNING r.fence) \
             {claimed_or_found}"
        );
        // In a transaction, $5 is the key's advisory lock: held until the transaction ends, so
        // that a duplicate learns at once that another open transaction claimed the key instead
        // of waiting on its uncommitted row. `held` is the first column. `DO NOTHING`: a
        // duplicate that keeps its transaction open while it waits must hold no lock on the
        // row, or a holder outside a transaction could neither renew nor record; a lapsed or
        // expired row is taken over by `take_over`.
        // Nothing tells a duplicate the holder's request while the holder's row cannot be read:
        // a duplicate waits (or is refused as in progress) and learns it from the committed
        // row. (A pair of request locks, one taken by the holder, once told it at once, but the
        // key's lock and the request's could not be taken as one step, and a duplicate of the
        // same request that looked between them was told it was another: a 422 for a retry.)
        // $6 is the retention (ms).
        // The last two columns name this transaction (its backend, and its start in µs), for
        // ending it should its claim be abandoned on a connection its caller keeps.
        // The lock is the table's own: the key's hash is mixed with
        // the table's oid, so that one table named two ways (`t`, `public.t`) shares them, and
        // two tables of one name in two schemas do not.
        let table_id = format!("'{t}'::regclass::oid::bigint");
        // A live record is read without taking the key's advisory lock or writing a row (`NULL`
        // first column): a replay holds no lock another call of the key waits on. (The
        // statement still holds its table locks until the transaction ends.)
        let claim_in_transaction = format!(
            "WITH found AS MATERIALIZED (SELECT {row_columns} FROM {t} r WHERE r.key = $1), \
             lock AS MATERIALIZED (SELECT CASE \
                 WHEN EXISTS (SELECT 1 FROM found WHERE found.state = 1 AND found.live) THEN NULL \
                 ELSE pg_try_advisory_xact_lock($5 # {table_id}) END AS held), \
             claimed AS (INSERT INTO {t} AS r (key, state, fence, attempt, fingerprint, record, \
               lease_until, expires_at) SELECT {new_row_in_transaction} FROM lock WHERE lock.held \
               ON CONFLICT (key) DO NOTHING RETURNING r.fence) \
             SELECT lock.held, seen.*, pg_backend_pid() AS pid, \
               (extract(epoch FROM now()) * 1000000)::bigint AS xact_us \
             FROM lock LEFT JOIN ( \
               SELECT -1::smallint AS state, fence, NULL::bytea AS attempt, \
                 NULL::bytea AS fingerprint, NULL::bytea AS record, 0::bigint AS remaining_ms, \
                 true AS live \
               FROM claimed \
               UNION ALL \
               SELECT * FROM found WHERE NOT EXISTS (SELECT 1 FROM claimed)) seen ON true"
        );
        // $1 key, $2 attempt, $3 fingerprint, $4 lease (ms), $5 the fence read, $6 retention
        // (ms): takes over the lapsed claim or expired record that a claim in a transaction
        // read, if it still is.
        let take_over = format!(
            "UPDATE {t} AS r SET state = 0, fence = nextval('{sequence}'), attempt = $2, \
               fingerprint = $3, record = NULL, \
               lease_until = statement_timestamp() + $4::bigint * interval '1 millisecond', \
               expires_at = statement_timestamp() + ($4::bigint + $6::bigint) * interval '1 millisecond' \
             WHERE r.key = $1 AND r.fence = $5 AND {claimable} RETURNING r.fence"
        );

        // $1 key, $2 fence, $3 record, $4 retention (ms). The record is kept at least until the
        // claim's lease would have ended. An expiry already that late is left as it is (a claim
        // in a transaction sets it up front), so that the update can be HOT.
        let completed = "SET state = 1, record = $3, attempt = NULL, expires_at = \
            greatest(expires_at, statement_timestamp() + $4::bigint * interval '1 millisecond', \
              lease_until)";
        // The operator's statements see what a claim sees: a lapsed claim or an expired record
        // is claimable, so it is not shown.
        let live =
            "r.fence > 0 AND ((r.state IN (0, 2) AND r.lease_until > statement_timestamp()) \
             OR (r.state = 1 AND r.expires_at > statement_timestamp()))";
        // The lease left of a claim, the hold left of an unknown outcome, the retention left of
        // a record (ms).
        let time_left = "floor(extract(epoch FROM (CASE WHEN r.state = 1 THEN r.expires_at \
               ELSE r.lease_until END - statement_timestamp())) * 1000)::bigint";
        // $1 key, $2 fence: the row if it is held (an unknown outcome) under this fence and not
        // locked by a transaction.
        let held = format!(
            "SELECT r.key FROM {t} r WHERE r.key = $1 AND r.fence = $2 AND r.state = 2 \
               AND r.lease_until > statement_timestamp() FOR UPDATE SKIP LOCKED"
        );
        Self {
            // $1 key. Any row of the key, live or not (a row of another state is corrupt).
            inspect: sql(format!(
                "SELECT r.state, r.fence, r.fingerprint, r.record, {time_left}, \
                   r.fence > 0 AND r.state IN (0, 1, 2) AND {live} \
                 FROM {t} r WHERE r.key = $1"
            )),
            // $1 the first key (inclusive), $2 the end (exclusive, NULL: none), $3 the position
            // (1-based) of a namespace's `:` or `#` (NULL: any key), $4 the state (NULL: any),
            // $5 how many. In key order, on the primary key's index.
            list: sql(format!(
                "SELECT r.key, r.state, r.fence, {time_left} FROM {t} r \
                 WHERE r.key >= $1 AND ($2::bytea IS NULL OR r.key < $2) \
                   AND ($3::int IS NULL OR substring(r.key FROM $3 FOR 1) IN ('\\x3a'::bytea, '\\x23'::bytea)) \
                   AND ($4::smallint IS NULL OR r.state = $4) AND {live} \
                 ORDER BY r.key LIMIT $5"
            )),
            count: sql(format!(
                "SELECT count(*) FILTER (WHERE r.state = 0), count(*) FILTER (WHERE r.state = 2), \
                   count(*) FILTER (WHERE r.state = 1) \
                 FROM {t} r WHERE {live}"
            )),
            // $1 key, $2 fence, $3 hold (ms). Pending → held, for at least the lease left.
            // Returns whether this statement held the key, and the state of the row with this
            // fence while live (2 if a retried hold already held it).
            hold: sql(format!(
                "WITH done AS (UPDATE {t} SET state = 2, attempt = NULL, \
                   lease_until = greatest(lease_until, \
                     statement_timestamp() + $3::bigint * interval '1 millisecond'), \
                   expires_at = greatest(expires_at, \
                     statement_timestamp() + $3::bigint * interval '1 millisecond') \
                 WHERE key = $1 AND fence = $2 AND state = 0 \
                   AND lease_until > statement_timestamp() RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM done), \
                   (SELECT state FROM {t} WHERE key = $1 AND fence = $2 \
                     AND lease_until > statement_timestamp())"
            )),
            // $1 key, $2 fence, $3 hold (ms). In the transaction that holds the claim.
            hold_in_transaction: sql(format!(
                "UPDATE {t} SET state = 2, attempt = NULL, \
                   lease_until = greatest(lease_until, \
                     statement_timestamp() + $3::bigint * interval '1 millisecond'), \
                   expires_at = greatest(expires_at, \
                     statement_timestamp() + $3::bigint * interval '1 millisecond') \
                 WHERE key = $1 AND fence = $2 AND state = 0"
            )),
            resolve_release: sql(format!(
                "WITH target AS ({held}) DELETE FROM {t} r USING target WHERE r.key = target.key"
            )),
            // $3 record, $4 retention (ms).
            resolve_record: sql(format!(
                "WITH target AS ({held}) UPDATE {t} r SET state = 1, record = $3, attempt = NULL, \
                   expires_at = statement_timestamp() + $4::bigint * interval '1 millisecond' \
                 FROM target WHERE r.key = target.key"
            )),
            // $1 key, $2 fence, $3 state. A row that a transaction holds locked is left alone.
            evict: sql(format!(
                "WITH target AS (SELECT r.key FROM {t} r WHERE r.key = $1 AND r.fence = $2 \
                   AND r.state = $3 AND {live} FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {t} r USING target WHERE r.key = target.key"
            )),
            table: table.to_owned(),
            schema,
            claim: sql(claim),
            claim_in_transaction: sql(claim_in_transaction),
            take_over: sql(take_over),
            // $1 the key's advisory lock: waits (where the deadlock detector sees it) for the
            // open transaction that holds it to end, and then holds it, as a claim would.
            wait_in_transaction: sql(format!("SELECT pg_advisory_xact_lock($1 # {table_id})")),
            // $1 key, $2 fence, $3 lease (ms). In the transaction that holds the claim, nobody
            // else can have taken it over, whatever its lease says.
            extend_in_transaction: sql(format!(
                "UPDATE {t} SET lease_until = statement_timestamp() + $3::bigint * interval '1 millisecond', \
                   expires_at = greatest(expires_at, \
                     statement_timestamp() + $3::bigint * interval '1 millisecond') \
                 WHERE key = $1 AND fence = $2 AND state = 0"
            )),
            // Outside a transaction a claim whose lease lapsed may be taken over at any moment,
            // so it no longer completes; inside, nobody can take it over (its row is not
            // committed), so the lease does not bound the body.
            // Returns whether this statement completed the key, and the state of the row with
            // this fence (1 if a retried complete already did).
            complete: sql(format!(
                "WITH done AS (UPDATE {t} {completed} WHERE key = $1 AND fence = $2 AND state = 0 \
                   AND lease_until > statement_timestamp() RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM done), \
                   (SELECT state FROM {t} WHERE key = $1 AND fence = $2)"
            )),
            // In a transaction there is no retried complete to recognise: one plain UPDATE.
            complete_in_transaction: sql(format!(
                "UPDATE {t} {completed} WHERE key = $1 AND fence = $2 AND state = 0"
            )),
            // $1 key, $2 fence. Returns whether it was released, and the key's current fence.
            release: sql(format!(
                "WITH gone AS (DELETE FROM {t} WHERE key = $1 AND fence = $2 AND state = 0 RETURNING 1) \
                 SELECT EXISTS (SELECT 1 FROM gone), (SELECT fence FROM {t} WHERE key = $1)"
            )),
            // $1 key, $2 fence, $3 lease (ms).
            renew: sql(format!(
                "UPDATE {t} SET lease_until = statement_timestamp() + $3::bigint * interval '1 millisecond', \
                   expires_at = statement_timestamp() + $3::bigint * interval '1 millisecond' \
                 WHERE key = $1 AND fence = $2 AND state = 0 AND lease_until > statement_timestamp()"
            )),
            // $1 key. For `wait`: the key's fence and state.
            state: sql(format!(
                "SELECT fence, state, lease_until > statement_timestamp() FROM {t} WHERE key = $1"
            )),
            // $1 batch size. Rows locked by a claim or a reaper elsewhere are skipped.
            reap: sql(format!(
                "WITH doomed AS (SELECT key FROM {t} WHERE expires_at < statement_timestamp() \
                   AND state IN (0, 1, 2) AND fence > 0 LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 DELETE FROM {t} r USING doomed WHERE r.key = doomed.key"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["idem_records", "_x", "billing.idem", "a1_b2"] {
            assert!(check_table(good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(MAX_TABLE_PART + 1);
        for bad in [
            "",
            "Idem",
            "1table",
            "idem-records",
            "idem records",
            "idem;drop table x",
            "\"quoted\"",
            "a.b.c",
            "user",
            "public.order",
            "select.idem",
            ".idem",
            "idem.",
            "idem\0",
            too_long.as_str(),
        ] {
            assert!(
                matches!(check_table(bad), Err(Error::InvalidOption { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_reserved_words_are_sorted_for_their_search() {
        assert!(RESERVED.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn the_default_schema_is_the_schema_file() {
        assert!(check_table(DEFAULT_TABLE).is_ok());
        assert_eq!(Statements::default_table().schema, SCHEMA);
    }

    #[test]
    fn a_qualified_table_qualifies_its_sequence_but_not_its_index() {
        let schema = Statements::for_table("billing.idem").unwrap().schema;
        assert!(schema.contains("CREATE SEQUENCE IF NOT EXISTS billing.idem_fence"));
        assert!(schema.contains("CREATE TABLE IF NOT EXISTS billing.idem ("));
        assert!(schema.contains("CREATE INDEX IF NOT EXISTS idem_expires_at ON billing.idem"));
        assert!(!schema.contains("idem_records"));
    }
}
