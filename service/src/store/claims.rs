//! SQLite: the request ids of the newest rows, kept in memory on the writer's connection
//! until the search indexer's chunks copy them into `request_ids`.
//!
//! A group's claims had dirtied one random page of `request_ids` per record, each written to
//! the WAL at the group's commit (skipping the claims outright had measured +10% unary
//! ingest; keeping them here, +4% to +32% in five alternating pairs, BENCHMARKS.md).
//! They now go into `temp.pending_request_ids` on the connection the writer holds: a
//! temporary table (`temp_store = memory`) that takes part in that connection's
//! transactions, so a group that rolls back leaves no claim there, and that costs no WAL
//! write and no fsync. The group's lookups probe it beside `request_ids`. Each indexer chunk
//! copies the oldest in key order ([`fold`]), many to a page.
//!
//! Nothing is lost with the memory: every stored row keeps its request id
//! (`log_entries.request_id`), and the setting [`CLAIMED_THROUGH`] names the last id whose
//! claims `request_ids` holds. `temp.pending_state.known` is the last id the pending table
//! covers; whenever the sequence has moved past it without this connection (at open, or
//! when another process wrote the file), [`sync`] adds the claims of the rows above it.
//! Only claims of rows a purge deleted before a chunk copied them are not restored after a
//! restart: their key is marked deleted, so records for it are refused anyway.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use super::StoreError;
use super::entity::log_entry::RequestId;
use super::sqlite::HeldTxn;
use crate::domain::record::{RequestKey, request_key};
use crate::domain::time::day_of;

/// The settings row holding the last id whose rows' claims `request_ids` holds (SQLite).
pub const CLAIMED_THROUGH: &str = "request_ids_claimed_through";

/// The pending claims and what they cover, created on the writer's connection when it opens.
/// `known` starts at [`CLAIMED_THROUGH`], so the first [`sync`] adds every row above it.
pub const CREATE_PENDING: &str = "
    CREATE TEMP TABLE pending_request_ids (
        day INTEGER NOT NULL,
        account_no INTEGER NOT NULL,
        request_key BLOB NOT NULL,
        log_id INTEGER NOT NULL,
        PRIMARY KEY (day, account_no, request_key)
    ) WITHOUT ROWID;
    CREATE INDEX temp.pending_request_ids_log_id ON pending_request_ids (log_id);
    CREATE TEMP TABLE pending_state (known INTEGER NOT NULL);
    INSERT INTO temp.pending_state (known) SELECT COALESCE((SELECT CAST(value AS INTEGER)
        FROM main.settings WHERE name = 'request_ids_claimed_through'), 0);";

/// Claims from which a group writes them into `request_ids` itself. A large group's claims
/// fill most of the pages they fall on anyway, and keeping them in memory only added work:
/// batch ingest (groups of ~4,000) measured 10–14% slower with every claim pending, while
/// unary ingest (groups of ~34) gained (median +9% in five alternating pairs, BENCHMARKS.md).
pub const PENDING_GROUP_CLAIMS: usize = 256;

/// One claim: (day, account number, request key, log id).
pub type Claim = (i64, i64, RequestKey, i64);

/// Claims one multi-row INSERT carries (four values each).
const INSERT_CHUNK: usize = 1_000;

/// Adds the claims of rows stored since the pending table last covered the sequence,
/// without this connection: every row, when the connection has just opened. Call it at
/// the start of each write transaction that reads or moves claims. It also takes a built
/// filter of stored ids into use and starts the next build when one is due. Returns the
/// last id the pending table now covers (the sequence's).
pub async fn sync(txn: &HeldTxn) -> Result<i64, StoreError> {
    // The filter of stored ids: taken into use once built, built again once full. A build
    // starts with the claims pending here, which its snapshot of `request_ids` cannot see.
    let seen = txn.seen();
    seen.refresh();
    if seen.wants_build() {
        seen.build(pending_keys(txn).await?);
    }
    let row = txn
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT (SELECT last_id FROM log_id_sequence WHERE name = 'log_entries') AS last, \
             (SELECT known FROM temp.pending_state) AS known",
        ))
        .await?;
    let (last, known) = match row {
        Some(row) => (
            row.try_get::<Option<i64>>("", "last")?.unwrap_or(0),
            row.try_get::<Option<i64>>("", "known")?.unwrap_or(0),
        ),
        None => (0, 0),
    };
    if last == known {
        return Ok(last);
    }
    let mut claims = Vec::new();
    if last > known {
        let rows = txn
            .query_all(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT id, account_no, ts, request_id FROM log_entries \
                 WHERE id > ? AND id <= ? AND request_id IS NOT NULL",
                [known.into(), last.into()],
            ))
            .await?;
        claims.reserve(rows.len());
        for row in rows {
            // Text, or a hex id's bytes (`log_entry::RequestId`).
            let request_id = row.try_get::<RequestId>("", "request_id")?.0;
            claims.push((
                day_of(row.try_get("", "ts")?),
                row.try_get("", "account_no")?,
                request_key(&request_id),
                row.try_get("", "id")?,
            ));
        }
        // Another process's chunk may have copied some of them already: kept once.
        insert(txn, &claims, "INSERT OR IGNORE").await?;
    }
    covered(txn, &claims, last).await?;
    Ok(last)
}

/// Adds a group's claims; the group then records the ids it took ([`covered`]).
pub async fn add(txn: &HeldTxn, claims: &[Claim]) -> Result<(), StoreError> {
    // No conflict clause for the key: the group looked every key up (or knew it new), so a
    // conflict is a bug, and failing the group is better than storing a row whose claim is
    // not kept. `OR FAIL` keeps no statement journal (see `sqlite::without_statement_journal`).
    insert(txn, claims, "INSERT OR FAIL").await
}

/// Copies the claims of the next `rows` ids after [`CLAIMED_THROUGH`] into `request_ids`,
/// in key order, and forgets them; returns whether more are pending.
pub async fn fold(txn: &HeldTxn, rows: i64) -> Result<bool, StoreError> {
    let known = sync(txn).await?;
    let claimed = super::settings::integer(txn, CLAIMED_THROUGH).await?;
    let upto = claimed.max(claimed.saturating_add(rows).min(known));
    // Also when `upto` is not past `claimed`: claims another process copied may still be
    // pending here.
    // `OR FAIL`: the chunk's transaction rolls back whole on an error, so no statement
    // journal (`sqlite::without_statement_journal`).
    for sql in [
        "INSERT OR FAIL INTO request_ids (day, account_no, request_key, log_id) \
         SELECT day, account_no, request_key, log_id FROM temp.pending_request_ids \
         WHERE log_id <= ? ORDER BY day, account_no, request_key ON CONFLICT DO NOTHING",
        "DELETE FROM temp.pending_request_ids WHERE log_id <= ?",
    ] {
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            [upto.into()],
        ))
        .await?;
    }
    if upto > claimed {
        super::settings::set_integer(txn, CLAIMED_THROUGH, upto).await?;
    }
    Ok(upto < known)
}

/// Forgets an account's pending claims from days before `before_day`, as a sweep step does
/// with its stored ones (`admin::prune_request_ids`). The pending claims are the newest
/// rows', so this reads few.
pub async fn prune(txn: &HeldTxn, account_no: i64, before_day: i64) -> Result<(), StoreError> {
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "DELETE FROM temp.pending_request_ids WHERE day < ? AND account_no = ?",
        [before_day.into(), account_no.into()],
    ))
    .await?;
    Ok(())
}

/// Records that the pending claims cover the rows up to `last`, and tells the filter of
/// stored ids (`store::seen`) the `claims` of those rows: a group's, whether it claimed them
/// here ([`add`]) or in `request_ids` itself, or those [`sync`] read back.
pub async fn covered(txn: &HeldTxn, claims: &[Claim], last: i64) -> Result<(), StoreError> {
    txn.seen().remember(
        claims
            .iter()
            .map(|&(_, account_no, key, _)| (account_no, key)),
    );
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE temp.pending_state SET known = ?",
        [last.into()],
    ))
    .await?;
    Ok(())
}

/// The (account number, key) of every pending claim.
async fn pending_keys(txn: &HeldTxn) -> Result<Vec<(i64, RequestKey)>, StoreError> {
    let rows = txn
        .query_all(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT account_no, request_key FROM temp.pending_request_ids",
        ))
        .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let key: Vec<u8> = row.try_get("", "request_key")?;
        let key = RequestKey::try_from(key.as_slice()).map_err(|_| {
            StoreError::Database(DbErr::Custom(format!(
                "a pending request key of {} bytes",
                key.len()
            )))
        })?;
        keys.push((row.try_get("", "account_no")?, key));
    }
    Ok(keys)
}

async fn insert(txn: &HeldTxn, claims: &[Claim], verb: &str) -> Result<(), StoreError> {
    for chunk in claims.chunks(INSERT_CHUNK) {
        let mut sql = format!(
            "{verb} INTO temp.pending_request_ids (day, account_no, request_key, log_id) VALUES "
        );
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 4);
        for (n, &(day, account_no, key, log_id)) in chunk.iter().enumerate() {
            sql.push_str(if n == 0 {
                "(?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?)"
            });
            values.extend([
                day.into(),
                account_no.into(),
                key.to_vec().into(),
                log_id.into(),
            ]);
        }
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sea_orm::DatabaseConnection;

    use super::*;
    use crate::store::seen::SeenIds;
    use crate::store::sqlite::{HeldSqlite, file};
    use crate::store::test_count;

    const DAY: i64 = 86_400_000_000;

    async fn held(db: &DatabaseConnection) -> Arc<HeldSqlite> {
        let path = file(db).await.expect("file").expect("a file");
        Arc::new(HeldSqlite::open(path).await.expect("open"))
    }

    /// Stores a row with request id `r{id}` on `day` and moves the sequence past it, as a
    /// group would (on the held transaction) or another connection.
    async fn store_row(db: &impl ConnectionTrait, id: i64, account_no: i64, day: i64) {
        db.execute_unprepared(&format!(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT OR IGNORE INTO api_key_numbers (id, value) VALUES (1, 'k'); \
             INSERT OR IGNORE INTO endpoint_numbers (id, value) VALUES (1, '/v1'); \
             INSERT INTO log_entries (id, account_no, ts, request_id, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES ({id}, {account_no}, {ts}, 'r{id}', 1, 1, 'GET', 1, 200, \
             X'ab', 1); \
             UPDATE log_id_sequence SET last_id = MAX(last_id, {id}) WHERE name = 'log_entries'",
            ts = day * DAY + 1,
        ))
        .await
        .expect("a row");
    }

    /// What a group does for a record it stores: the row, and its claim pending.
    async fn group_stores(txn: &HeldTxn, id: i64, account_no: i64, day: i64) {
        store_row(txn, id, account_no, day).await;
        add(txn, &[claim(id, account_no, day)]).await.expect("add");
        covered(txn, &[claim(id, account_no, day)], id)
            .await
            .expect("covered");
    }

    fn claim(id: i64, account_no: i64, day: i64) -> Claim {
        (day, account_no, request_key(&format!("r{id}")), id)
    }

    /// The pending claims, in key order.
    async fn pending(txn: &HeldTxn) -> Vec<Claim> {
        stored(txn, "temp.pending_request_ids").await
    }

    async fn stored(db: &impl ConnectionTrait, table: &str) -> Vec<Claim> {
        db.query_all(Statement::from_string(
            DbBackend::Sqlite,
            format!(
                "SELECT day, account_no, request_key, log_id FROM {table} \
                 ORDER BY day, account_no, request_key"
            ),
        ))
        .await
        .expect("claims")
        .iter()
        .map(|row| {
            let key: Vec<u8> = row.try_get("", "request_key").expect("a key");
            (
                row.try_get("", "day").expect("a day"),
                row.try_get("", "account_no").expect("an account"),
                key.try_into().expect("16 bytes"),
                row.try_get("", "log_id").expect("an id"),
            )
        })
        .collect()
    }

    fn sorted(mut claims: Vec<Claim>) -> Vec<Claim> {
        claims.sort_unstable();
        claims
    }

    async fn claimed_through(db: &DatabaseConnection) -> i64 {
        crate::store::settings::integer(db, CLAIMED_THROUGH)
            .await
            .expect("the setting")
    }

    #[tokio::test]
    async fn claims_wait_in_memory_until_a_fold_copies_them_in_order() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        let claims = [claim(1, 2, 100), claim(2, 1, 100), claim(3, 1, 99)];
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        for &(day, account_no, _, id) in &claims {
            store_row(&txn, id, account_no, day).await;
        }
        add(&txn, &claims).await.expect("add");
        covered(&txn, &claims, 3).await.expect("covered");
        txn.commit().expect("commit");
        // Nothing written to the file.
        assert_eq!(test_count(&db, "request_ids").await, 0);

        // The next two ids' claims, then the rest.
        let txn = held.begin().expect("begin");
        assert!(fold(&txn, 2).await.expect("fold"), "one claim is left");
        assert_eq!(pending(&txn).await, vec![claims[2]]);
        txn.commit().expect("commit");
        assert_eq!(
            stored(&db, "request_ids").await,
            sorted(claims[..2].to_vec())
        );
        assert_eq!(claimed_through(&db).await, 2);
        let txn = held.begin().expect("begin");
        assert!(!fold(&txn, 2).await.expect("fold"), "none is left");
        assert!(pending(&txn).await.is_empty());
        txn.commit().expect("commit");
        assert_eq!(stored(&db, "request_ids").await, sorted(claims.to_vec()));
        assert_eq!(claimed_through(&db).await, 3);
    }

    #[tokio::test]
    async fn a_rolled_back_group_leaves_no_claim_and_no_cover() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        {
            let txn = held.begin().expect("begin");
            sync(&txn).await.expect("sync");
            group_stores(&txn, 1, 1, 100).await;
        }
        let txn = held.begin().expect("begin");
        assert!(pending(&txn).await.is_empty());
        // Still covering 0: a row another connection stores as id 1 is picked up.
        store_row(&txn, 1, 1, 100).await;
        sync(&txn).await.expect("sync");
        assert_eq!(pending(&txn).await, vec![claim(1, 1, 100)]);
    }

    #[tokio::test]
    async fn a_connection_opened_later_restores_the_claims_not_copied() {
        let (_dir, db) = crate::store::test_database().await;
        // Rows 1–2 are claimed in `request_ids`, 3–4 were pending when a server stopped.
        for id in 1..=4 {
            store_row(&db, id, 1 + id % 2, 100 + id).await;
        }
        crate::store::settings::set_integer(&db, CLAIMED_THROUGH, 2)
            .await
            .expect("set");
        db.execute_unprepared("UPDATE log_entries SET request_id = NULL WHERE id = 4")
            .await
            .expect("a row without a request id");
        let held = held(&db).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        assert_eq!(pending(&txn).await, vec![claim(3, 2, 103)]);
        // Synced once: the next sync adds nothing twice.
        sync(&txn).await.expect("sync");
        assert_eq!(pending(&txn).await, vec![claim(3, 2, 103)]);
    }

    #[tokio::test]
    async fn a_hex_request_id_stored_as_bytes_is_claimed_as_its_text() {
        let (_dir, db) = crate::store::test_database().await;
        store_row(&db, 1, 1, 100).await;
        // As the writer stores `0a1b` (`writer::packed_request_id`).
        db.execute_unprepared("UPDATE log_entries SET request_id = X'0a1b' WHERE id = 1")
            .await
            .expect("bytes");
        let held = held(&db).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        assert_eq!(pending(&txn).await, vec![(100, 1, request_key("0a1b"), 1)]);
    }

    #[tokio::test]
    async fn rows_whose_group_claimed_them_in_the_table_are_not_read_again() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        store_row(&txn, 1, 1, 100).await;
        insert_claimed(&txn, claim(1, 1, 100)).await;
        covered(&txn, &[claim(1, 1, 100)], 1)
            .await
            .expect("covered");
        sync(&txn).await.expect("sync");
        assert!(pending(&txn).await.is_empty());
    }

    #[tokio::test]
    async fn rows_another_process_stores_are_picked_up_before_the_next_lookup() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        group_stores(&txn, 1, 1, 100).await;
        txn.commit().expect("commit");
        store_row(&db, 2, 1, 100).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        assert_eq!(
            pending(&txn).await,
            sorted(vec![claim(1, 1, 100), claim(2, 1, 100)])
        );
        // Another process's fold may already have copied them: both end up stored once.
        txn.execute_unprepared(
            "INSERT INTO request_ids (day, account_no, request_key, log_id) \
             SELECT day, account_no, request_key, log_id FROM temp.pending_request_ids \
             WHERE log_id = 2",
        )
        .await
        .expect("copied elsewhere");
        assert!(!fold(&txn, 10).await.expect("fold"));
        txn.commit().expect("commit");
        assert_eq!(
            stored(&db, "request_ids").await,
            sorted(vec![claim(1, 1, 100), claim(2, 1, 100)])
        );
    }

    #[tokio::test]
    async fn the_filter_of_stored_ids_learns_every_claim_made_or_read_back() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("the first sync starts a build");
        assert!(txn.seen().finish_build());
        group_stores(&txn, 1, 1, 100).await;
        txn.commit().expect("commit");
        store_row(&db, 2, 7, 100).await;
        let txn = held.begin().expect("begin");
        sync(&txn).await.expect("sync");
        let may_hold = |id: i64, account_no: i64| {
            txn.seen()
                .may_hold(account_no, &request_key(&format!("r{id}")))
        };
        assert!(may_hold(1, 1), "claimed by a group");
        assert!(may_hold(2, 7), "read back from another process's row");
        assert!(!may_hold(2, 1) && !may_hold(3, 1), "never claimed");

        // A new filter starts with the claims pending in memory: they are in no table.
        let path = file(&db).await.expect("file").expect("a file");
        let rebuilt = SeenIds::new(path);
        rebuilt.build(pending_keys(&txn).await.expect("pending keys"));
        assert!(rebuilt.finish_build());
        for (id, account_no) in [(1, 1), (2, 7)] {
            assert!(
                rebuilt.may_hold(account_no, &request_key(&format!("r{id}"))),
                "r{id}"
            );
        }
    }

    #[tokio::test]
    async fn migrating_down_claims_the_pending_request_ids() {
        use reqlog_migrations::{Migrator, MigratorTrait};
        let (_dir, db) = crate::store::test_database().await;
        for id in 1..=3 {
            store_row(&db, id, id, 100 + id).await;
        }
        db.execute_unprepared(
            "UPDATE log_entries SET request_id = NULL WHERE id = 3; \
             UPDATE settings SET value = '1' WHERE name = 'request_ids_claimed_through'",
        )
        .await
        .expect("row 1 claimed, row 2 pending, row 3 without a request id");
        insert_claimed(&db, claim(1, 1, 101)).await;

        // The pending-claims migration and the seven after it.
        Migrator::down(&db, Some(8)).await.expect("down");
        assert_eq!(
            stored(&db, "request_ids").await,
            vec![claim(1, 1, 101), claim(2, 2, 102)]
        );
        assert_eq!(claimed_through(&db).await, 0, "the setting is gone");
        Migrator::up(&db, None).await.expect("up");
        assert_eq!(claimed_through(&db).await, 3);
    }

    async fn insert_claimed(db: &impl ConnectionTrait, (day, account_no, key, id): Claim) {
        db.execute(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "INSERT INTO request_ids (day, account_no, request_key, log_id) VALUES (?, ?, ?, ?)",
            [
                day.into(),
                account_no.into(),
                key.to_vec().into(),
                id.into(),
            ],
        ))
        .await
        .expect("a claim");
    }

    #[tokio::test]
    async fn a_prune_forgets_one_accounts_claims_before_a_day() {
        let (_dir, db) = crate::store::test_database().await;
        let held = held(&db).await;
        let claims = [
            claim(1, 1, 95),
            claim(2, 1, 100),
            claim(3, 2, 95),
            claim(4, 1, 99),
        ];
        let txn = held.begin().expect("begin");
        add(&txn, &claims).await.expect("add");
        prune(&txn, 1, 100).await.expect("prune");
        assert_eq!(pending(&txn).await, vec![claims[2], claims[1]]);
    }
}
