//! Key labels: a key's name and prefix, stored once per account, key and label in
//! `api_key_labels`; rows hold the label's number (`api_key_label_no`, migration
//! `m20261207_000013`).
//!
//! Both texts repeat on every row a key made and change only when the key is renamed. They
//! are kept per account, not in one dictionary for all: a search tries the account's few
//! labels once (a condition on the rows' numbers), and a sort by name or prefix joins the
//! account's labels. Each label names its key (`api_key_no`), so the rows of a label that
//! holds a search term are found through the key index: the search index holds neither
//! text ([`matching_keys`]). Like the dictionaries', a label is added the first time ingest
//! sees it (in the group's transaction, `ON CONFLICT DO NOTHING`) and never changed or
//! removed, so a number names the same texts forever and a committed one may be cached.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Alias, Condition, Expr, OnConflict, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbErr};

use super::StoreError;
use super::dictionary::Spelling;

/// The table.
pub const TABLE: &str = "api_key_labels";

/// Where a label's name is, for `dictionary::texts_of`.
pub const NAMES: Spelling = Spelling {
    table: TABLE,
    column: "name",
};

/// Where a label's prefix is, for `dictionary::texts_of`.
pub const PREFIXES: Spelling = Spelling {
    table: TABLE,
    column: "prefix",
};

/// Labels one statement carries (three values each): well under either backend's limit on
/// bound parameters.
const CHUNK: usize = 300;

/// Labels the writer remembers; past this its cache starts over. Names are at most 128
/// bytes and prefixes 32: a few MiB.
const CACHE_LABELS: usize = 32_768;

/// A label as the writer looks it up: the account's number, the key's number, the name,
/// the prefix.
pub type Label<'a> = (i64, i64, &'a str, &'a str);

/// Label numbers by (account, key): each key's (name, prefix, number). A key has one label
/// until it is renamed, so a lookup hashes two integers, scans a label or two, and (on the
/// ingest path, twice a record) allocates nothing.
type ByKey = HashMap<(i64, i64), Vec<(String, String, i64)>>;

fn find(labels: &ByKey, (account_no, key_no, name, prefix): Label<'_>) -> Option<i64> {
    labels
        .get(&(account_no, key_no))?
        .iter()
        .find(|(n, p, _)| n == name && p == prefix)
        .map(|&(_, _, id)| id)
}

/// The writer's cache of committed labels, and its lookups for one group.
#[derive(Debug, Default)]
pub struct Labels {
    committed: ByKey,
    /// Labels in `committed`.
    count: usize,
}

/// The labels a group's rows use that were not cached: found or added in this group's
/// transaction, remembered only once it commits.
#[derive(Debug, Default)]
pub struct GroupLabels {
    fresh: ByKey,
}

impl Labels {
    /// Numbers for every label in `labels`, adding unknown ones in the caller's transaction,
    /// in sorted order (two PostgreSQL replicas adding the same ones wait for each other
    /// instead of deadlocking).
    pub async fn resolve<'a>(
        &self,
        txn: &impl ConnectionTrait,
        labels: impl Iterator<Item = Label<'a>>,
    ) -> Result<GroupLabels, StoreError> {
        let mut missing: Vec<Label<'a>> = labels
            .filter(|label| find(&self.committed, *label).is_none())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        missing.sort_unstable();
        let table = Alias::new(TABLE);
        let columns = || {
            [
                Alias::new("account_no"),
                Alias::new("api_key_no"),
                Alias::new("name"),
                Alias::new("prefix"),
            ]
        };
        let backend = txn.get_database_backend();
        let mut fresh = ByKey::new();
        for chunk in missing.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert
                .into_table(table.clone())
                .columns(columns())
                .on_conflict(OnConflict::columns(columns()).do_nothing().to_owned());
            for &(account_no, key_no, name, prefix) in chunk {
                insert
                    .values([account_no.into(), key_no.into(), name.into(), prefix.into()])
                    .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?;
            }
            txn.execute(backend.build(&insert)).await?;
            // The numbers read as bigints: PostgreSQL's columns are `integer`s, which its
            // driver will not decode as i64.
            let bigint = |column: &str| Expr::col(Alias::new(column)).cast_as(Alias::new("BIGINT"));
            let select = Query::select()
                .columns([Alias::new("id"), Alias::new("name"), Alias::new("prefix")])
                .expr_as(bigint("account_no"), Alias::new("account_no"))
                .expr_as(bigint("api_key_no"), Alias::new("api_key_no"))
                .from(table.clone())
                .and_where(
                    Expr::tuple(columns().map(|column| Expr::col(column).into())).in_tuples(
                        chunk.iter().map(|&(account_no, key_no, name, prefix)| {
                            (account_no, key_no, name.to_owned(), prefix.to_owned())
                        }),
                    ),
                )
                .to_owned();
            for row in txn.query_all(backend.build(&select)).await? {
                let key = (
                    row.try_get::<i64>("", "account_no")?,
                    row.try_get::<i64>("", "api_key_no")?,
                );
                fresh.entry(key).or_default().push((
                    row.try_get::<String>("", "name")?,
                    row.try_get::<String>("", "prefix")?,
                    row.try_get("", "id")?,
                ));
            }
        }
        Ok(GroupLabels { fresh })
    }

    /// The number of `label` for a row of the group `group` was resolved for.
    pub fn id(&self, group: &GroupLabels, label: Label<'_>) -> Option<i64> {
        find(&self.committed, label).or_else(|| find(&group.fresh, label))
    }

    /// Remembers a committed group's new labels.
    pub fn committed(&mut self, group: GroupLabels) {
        let fresh: usize = group.fresh.values().map(Vec::len).sum();
        if self.count + fresh > CACHE_LABELS {
            self.committed.clear();
            self.count = 0;
        }
        self.count += fresh;
        for (key, labels) in group.fresh {
            self.committed.entry(key).or_default().extend(labels);
        }
    }
}

/// The account's labels whose name or prefix meets `matches` (a condition on the unqualified
/// columns `name` and `prefix`): a subquery for "the row's label is one of them".
pub fn of_account_where(account_no: i64, matches: Condition) -> SelectStatement {
    of_account(account_no, matches)
        .column(Alias::new("id"))
        .to_owned()
}

/// A SELECT, without columns yet, of the account's labels that meet `matches`.
fn of_account(account_no: i64, matches: Condition) -> SelectStatement {
    Query::select()
        .from(Alias::new(TABLE))
        .cond_where(
            Condition::all()
                .add(Expr::col(Alias::new("account_no")).eq(account_no))
                .add(matches),
        )
        .to_owned()
}

/// The keys (their numbers) of the account's labels that meet `matches` (a condition on
/// the unqualified columns `name` and `prefix`): a search reads their rows through the key
/// index, since the search index holds neither text.
pub async fn matching_keys(
    db: &impl ConnectionTrait,
    account_no: i64,
    matches: Condition,
) -> Result<Vec<i64>, StoreError> {
    let select = of_account(account_no, matches)
        .distinct()
        .expr_as(
            Expr::col(Alias::new("api_key_no")).cast_as(Alias::new("BIGINT")),
            Alias::new("api_key_no"),
        )
        .to_owned();
    let backend = db.get_database_backend();
    let mut keys = db
        .query_all(backend.build(&select))
        .await?
        .iter()
        .map(|row| row.try_get::<i64>("", "api_key_no"))
        .collect::<Result<Vec<_>, DbErr>>()?;
    keys.sort_unstable();
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, TransactionTrait};

    use super::*;

    #[tokio::test]
    async fn each_label_is_stored_once_per_account_and_reads_back() {
        let (_dir, db) = crate::store::test_database().await;
        let mut labels = Labels::default();
        let wanted = [
            (1, 1, "Production", "sk_live_"),
            (1, 1, "Production", "sk_live_"),
            (2, 1, "Production", "sk_live_"),
            (1, 1, "", ""),
            (1, 1, "Production", "sk_test_"),
            (1, 2, "Production", "sk_live_"),
        ];
        let txn = db.begin().await.unwrap();
        let group = labels.resolve(&txn, wanted.into_iter()).await.unwrap();
        txn.commit().await.unwrap();
        let numbers: Vec<i64> = wanted
            .iter()
            .map(|&label| labels.id(&group, label).unwrap())
            .collect();
        assert_eq!(numbers[0], numbers[1]);
        let distinct: HashSet<i64> = numbers.iter().copied().collect();
        assert_eq!(distinct.len(), 5, "{numbers:?}");
        labels.committed(group);

        // Cached now: a group of known labels adds nothing and needs no statement's answer.
        let txn = db.begin().await.unwrap();
        let group = labels.resolve(&txn, wanted.into_iter()).await.unwrap();
        txn.commit().await.unwrap();
        assert!(group.fresh.is_empty());
        assert_eq!(labels.id(&group, wanted[2]), Some(numbers[2]));

        let [names, prefixes] = crate::store::dictionary::texts_of(
            &db,
            [(NAMES, numbers.clone()), (PREFIXES, numbers.clone())],
        )
        .await
        .unwrap();
        assert_eq!(names[&numbers[2]], "Production");
        assert_eq!(prefixes[&numbers[2]], "sk_live_");
        assert_eq!(prefixes[&numbers[4]], "sk_test_");
        assert_eq!(names[&numbers[3]], "");
        let stored = db
            .query_one(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM api_key_labels",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        assert_eq!(stored, 5);
    }

    #[tokio::test]
    async fn a_label_added_by_a_rolled_back_group_is_not_remembered() {
        let (_dir, db) = crate::store::test_database().await;
        let labels = Labels::default();
        let txn = db.begin().await.unwrap();
        let group = labels
            .resolve(&txn, [(7, 1, "Key", "pk_")].into_iter())
            .await
            .unwrap();
        assert!(labels.id(&group, (7, 1, "Key", "pk_")).is_some());
        txn.rollback().await.unwrap();
        // The group is dropped, never committed: nothing is cached and nothing stored.
        let txn = db.begin().await.unwrap();
        let again = labels
            .resolve(&txn, [(7, 1, "Key", "pk_")].into_iter())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(again.fresh.len(), 1);
    }
}
