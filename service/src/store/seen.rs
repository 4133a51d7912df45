//! SQLite: a Bloom filter of every request id the database holds, on the writer's
//! connection, so that a group probes `request_ids` and the pending claims only for the
//! records whose id may be there.
//!
//! A record's id is looked up on its day and both neighbours, in both tables: six B-tree
//! probes a record, nearly all of them finding nothing, since a gateway resends a request
//! only when an answer was lost. With the filter in front, unary ingest gained 15–43% and
//! batch ingest 14–29% in three alternating pairs each (BENCHMARKS.md).
//!
//! The filter holds (account number, request key) of every claim, whatever its day: a
//! "no" is certain, so the record is new; a "maybe" (a duplicate, or 1% of new ids) is
//! probed as before. It is built from `request_ids` on a thread of its own, on a read-only
//! connection, while the writer goes on probing everything; the writer meanwhile
//! [`SeenIds::remember`]s every claim it makes or reads back (`store::claims::sync`) and
//! hands the filter those on arrival, so nothing committed after the build's snapshot is
//! missed. A build also starts with the claims pending in memory, which the snapshot cannot
//! see. Deleted ids stay in the filter (a "maybe" too many, never a wrong "no"); once it
//! holds its capacity, twice the ids stored when it was built, a new one is built the same
//! way, which also forgets them.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fastbloom::BloomFilter;
use rusqlite::OpenFlags;

use crate::domain::record::RequestKey;

/// False positives the filter is sized for: a new record is probed as before this often.
const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The smallest capacity a filter is built with (~1.2 MB), so a young database is not
/// rebuilt every few thousand records.
const MIN_CAPACITY: usize = 1 << 20;

/// A fixed seed: which absent ids the filter answers "maybe" for is the same on every run.
const SEED: u128 = 0x7265_716c_6f67_5f73_6565_6e5f_6964_7331;

/// How long a failed build waits before the next is started.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How long the builder waits for SQLite's locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The filter of the request ids a database holds; see the module comment.
#[derive(Debug)]
pub struct SeenIds {
    file: PathBuf,
    min_capacity: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The filter in use, once one is built.
    ready: Option<Filter>,
    /// A build under way.
    building: Option<Building>,
    /// After a failed build, when the next may start.
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Filter {
    bloom: BloomFilter,
    held: usize,
    capacity: usize,
}

impl Filter {
    fn new(stored: usize, min_capacity: usize) -> Self {
        let capacity = stored.saturating_mul(2).max(min_capacity);
        Self {
            bloom: BloomFilter::with_false_pos(FALSE_POSITIVE_RATE)
                .seed(&SEED)
                .expected_items(capacity),
            held: 0,
            capacity,
        }
    }

    fn insert(&mut self, account_no: i64, key: &[u8]) {
        self.bloom.insert(&(account_no, key));
        self.held += 1;
    }

    fn may_hold(&self, account_no: i64, key: &[u8]) -> bool {
        self.bloom.contains(&(account_no, key))
    }
}

#[derive(Debug)]
struct Building {
    /// Claims made or read back since the build started: the snapshot may not hold them.
    since: Vec<(i64, RequestKey)>,
    /// The built filter and how long reading it took, or why none was built.
    result: Receiver<Result<(Filter, Duration), String>>,
}

impl SeenIds {
    /// A filter of `file`'s request ids; nothing is built until [`SeenIds::build`].
    pub fn new(file: PathBuf) -> Self {
        Self::with_min_capacity(file, MIN_CAPACITY)
    }

    fn with_min_capacity(file: PathBuf, min_capacity: usize) -> Self {
        Self {
            file,
            min_capacity,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state whole, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a new filter should be built: none is ready or under way, or the one in use
    /// is full, and no failed build is waiting to be retried.
    pub fn wants_build(&self) -> bool {
        let state = self.state();
        let full = state
            .ready
            .as_ref()
            .is_none_or(|filter| filter.held >= filter.capacity);
        full && state.building.is_none() && state.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Starts building a filter on a thread of its own, from `request_ids` as a snapshot
    /// taken after this call sees it, plus `pending`: the claims in memory on the writer's
    /// connection, which that snapshot cannot see.
    pub fn build(&self, pending: Vec<(i64, RequestKey)>) {
        let (sender, result) = std::sync::mpsc::channel();
        let file = self.file.clone();
        let min_capacity = self.min_capacity;
        let mut state = self.state();
        state.building = Some(Building {
            since: pending,
            result,
        });
        let spawned = std::thread::Builder::new()
            .name("reqlog-seen-ids".into())
            .spawn(move || {
                let started = Instant::now();
                let built = read_filter(file, min_capacity)
                    .map(|filter| (filter, started.elapsed()))
                    .map_err(|error| error.to_string());
                // The writer may have stopped; then nobody needs the filter.
                let _ = sender.send(built);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start building the request-id filter");
            state.building = None;
            state.retry_at = Some(Instant::now() + RETRY_AFTER);
        }
    }

    /// Takes a finished build into use, adding the claims remembered meanwhile.
    pub fn refresh(&self) {
        let mut state = self.state();
        let Some(building) = state.building.as_mut() else {
            return;
        };
        let built = match building.result.try_recv() {
            Ok(built) => built,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err("its thread ended without a filter".into()),
        };
        let Some(building) = state.building.take() else {
            return;
        };
        match built {
            Ok((mut filter, took)) => {
                for (account_no, key) in &building.since {
                    filter.insert(*account_no, key);
                }
                tracing::info!(
                    held = filter.held,
                    capacity = filter.capacity,
                    seconds = took.as_secs_f64(),
                    "request-id filter built"
                );
                state.ready = Some(filter);
                state.retry_at = None;
            }
            Err(error) => {
                // Until a build succeeds every id is probed, as without the filter.
                tracing::warn!(%error, "building the request-id filter failed; retrying later");
                state.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
    }

    /// Records claims, as (account number, key), that the database holds or is about to:
    /// made by a group (committed or not: one that rolls back only leaves a "maybe" too
    /// many) or read back from rows.
    pub fn remember(&self, claims: impl IntoIterator<Item = (i64, RequestKey)>) {
        let mut state = self.state();
        let State {
            ready, building, ..
        } = &mut *state;
        for (account_no, key) in claims {
            if let Some(filter) = ready.as_mut() {
                filter.insert(account_no, &key);
            }
            if let Some(building) = building.as_mut() {
                building.since.push((account_no, key));
            }
        }
    }

    /// Whether the database may hold `key` for the account: `false` is certain; `true`
    /// also while no filter is built yet.
    pub fn may_hold(&self, account_no: i64, key: &RequestKey) -> bool {
        self.state()
            .ready
            .as_ref()
            .is_none_or(|filter| filter.may_hold(account_no, key))
    }

    /// Waits until the build under way has ended; returns whether a filter is in use.
    #[cfg(test)]
    pub fn finish_build(&self) -> bool {
        let until = Instant::now() + Duration::from_secs(30);
        while self.state().building.is_some() {
            assert!(Instant::now() < until, "the build never ended");
            std::thread::sleep(Duration::from_millis(5));
            self.refresh();
        }
        self.state().ready.is_some()
    }
}

/// Reads every stored claim's (account number, key) in one snapshot into a filter sized for
/// twice their number.
fn read_filter(file: PathBuf, min_capacity: usize) -> Result<Filter, rusqlite::Error> {
    let connection = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.execute_batch("BEGIN")?;
    let stored: i64 =
        connection.query_row("SELECT count(*) FROM request_ids", [], |row| row.get(0))?;
    let mut filter = Filter::new(usize::try_from(stored).unwrap_or(0), min_capacity);
    let mut statement = connection.prepare("SELECT account_no, request_key FROM request_ids")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let account_no: i64 = row.get(0)?;
        let key = row.get_ref(1)?.as_blob()?;
        filter.insert(account_no, key);
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::request_key;

    async fn stored_keys(db: &sea_orm::DatabaseConnection, keys: &[(i64, &str)]) {
        use sea_orm::ConnectionTrait;
        for (n, (account_no, request_id)) in keys.iter().enumerate() {
            let key: String = request_key(request_id)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            db.execute_unprepared(&format!(
                "INSERT INTO request_ids (day, account_no, request_key, log_id) \
                 VALUES (100, {account_no}, X'{key}', {n})"
            ))
            .await
            .expect("a claim");
        }
    }

    async fn seen_ids(
        min_capacity: usize,
    ) -> (tempfile::TempDir, sea_orm::DatabaseConnection, SeenIds) {
        let (dir, db) = crate::store::test_database().await;
        let path = crate::store::sqlite::file(&db)
            .await
            .expect("file")
            .expect("a file");
        (dir, db, SeenIds::with_min_capacity(path, min_capacity))
    }

    #[tokio::test]
    async fn every_id_may_be_held_until_a_filter_is_built() {
        let (_dir, _db, seen) = seen_ids(MIN_CAPACITY).await;
        assert!(seen.wants_build());
        assert!(seen.may_hold(1, &request_key("anything")));
        seen.build(Vec::new());
        assert!(!seen.wants_build(), "one build at a time");
        assert!(seen.finish_build());
        assert!(!seen.may_hold(1, &request_key("anything")));
        assert!(!seen.wants_build());
    }

    #[tokio::test]
    async fn a_built_filter_holds_the_stored_the_pending_and_the_remembered_claims() {
        let (_dir, db, seen) = seen_ids(MIN_CAPACITY).await;
        stored_keys(&db, &[(1, "stored-1"), (2, "stored-2")]).await;
        seen.build(vec![(1, request_key("pending"))]);
        // Made while the build runs, maybe after its snapshot.
        seen.remember([(3, request_key("meanwhile"))]);
        assert!(seen.finish_build());
        seen.remember([(1, request_key("after"))]);
        for (account_no, request_id) in [
            (1, "stored-1"),
            (2, "stored-2"),
            (1, "pending"),
            (3, "meanwhile"),
            (1, "after"),
        ] {
            assert!(
                seen.may_hold(account_no, &request_key(request_id)),
                "{request_id} of account {account_no}"
            );
        }
        // The same id under another account, and ids nobody claimed, are certainly absent
        // (with this seed: the filter's 1% of false positives misses these).
        assert!(!seen.may_hold(2, &request_key("stored-1")));
        let absent = (0..1_000)
            .filter(|n| seen.may_hold(1, &request_key(&format!("absent-{n}"))))
            .count();
        assert!(absent < 50, "{absent} of 1,000 absent ids may be held");
    }

    #[tokio::test]
    async fn a_full_filter_is_built_again_from_what_is_stored() {
        let (_dir, db, seen) = seen_ids(4).await;
        stored_keys(&db, &[(1, "a"), (1, "b")]).await;
        seen.build(Vec::new());
        assert!(seen.finish_build());
        assert!(!seen.wants_build(), "2 of 4");
        seen.remember([(1, request_key("c")), (1, request_key("d"))]);
        assert!(seen.wants_build(), "4 of 4");
        // Two more rows were stored meanwhile; the new filter is sized for all four.
        stored_keys(&db, &[(1, "c"), (1, "d")]).await;
        seen.build(Vec::new());
        seen.remember([(1, request_key("e"))]);
        assert!(seen.finish_build());
        let state = seen.state();
        let filter = state.ready.as_ref().expect("a filter");
        assert_eq!((filter.held, filter.capacity), (5, 8));
        for request_id in ["a", "b", "c", "d", "e"] {
            assert!(filter.may_hold(1, &request_key(request_id)), "{request_id}");
        }
    }

    #[tokio::test]
    async fn a_failed_build_leaves_every_id_probed_and_waits_to_retry() {
        let dir = tempfile::tempdir().expect("dir");
        let seen = SeenIds::new(dir.path().join("missing.sqlite"));
        seen.build(Vec::new());
        assert!(!seen.finish_build());
        assert!(seen.may_hold(1, &request_key("anything")));
        assert!(!seen.wants_build(), "retried only after a while");
    }
}
