//! Dictionaries: strings that repeat on every row stored once, rows holding their number
//! (W6, BENCHMARKS.md). Four of them:
//! - `user_agents`: a few distinct strings per platform, and no query filters, sorts or
//!   searches on them; a page looks its rows' agents up in one query.
//! - `account_numbers`: the account id leads the key of `log_entries`, `request_ids` and
//!   `usage_stats` (and of both SQLite indexes); every query names one account, so it is
//!   looked up once per request and the number bound in its place.
//! - `api_key_numbers`: the key id of every row (and of the key index) and of every usage
//!   counter. A filter's ids are looked up by the statement itself ([`holds_number_of`]);
//!   a page spells its rows' numbers together with their agents ([`texts_of`]).
//! - `endpoint_numbers`: the path in the usage counters' key (`store::usage`); a read
//!   spells it only when it groups by it.
//!
//! A value is added the first time ingest sees it (in the group's transaction, `ON CONFLICT
//! DO NOTHING`, so replicas may race) and never changed or removed, so a number names the
//! same string forever and a committed one may be cached.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{
    Alias, Expr, IntoColumnRef, IntoCondition, OnConflict, Query, SelectStatement, SimpleExpr,
    UnionType,
};
use sea_orm::{ConnectionTrait, DbErr};

use super::StoreError;

/// Values one statement carries: well under either backend's limit on bound parameters.
const CHUNK: usize = 500;

/// One of the dictionaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dictionary {
    /// `user_agents`: rows' `user_agent_id`.
    UserAgents,
    /// `account_numbers`: rows' `account_no`.
    Accounts,
    /// `api_key_numbers`: rows' and usage counters' `api_key_no`.
    ApiKeys,
    /// `endpoint_numbers`: the usage counters' `endpoint_no`.
    Endpoints,
}

impl Dictionary {
    /// The dictionary's table.
    pub fn table_name(self) -> &'static str {
        match self {
            Self::UserAgents => "user_agents",
            Self::Accounts => "account_numbers",
            Self::ApiKeys => "api_key_numbers",
            Self::Endpoints => "endpoint_numbers",
        }
    }

    pub fn table(self) -> Alias {
        Alias::new(self.table_name())
    }

    /// Values the writer remembers; past this its cache starts over (a gateway sending a
    /// new agent on every call must not grow the writer's memory without bound). Account
    /// ids are at most 64 bytes, agents 512, key ids 128, paths 2,048: a few MiB each.
    fn cache_values(self) -> usize {
        match self {
            Self::UserAgents | Self::Endpoints => 4_096,
            Self::Accounts => 65_536,
            Self::ApiKeys => 32_768,
        }
    }
}

/// The writer's cache of one dictionary's committed values, and its lookups for one group.
#[derive(Debug)]
pub struct Ids {
    dictionary: Dictionary,
    committed: HashMap<String, i64>,
}

/// The numbers a group's rows use: those already cached and those found or added in this
/// group's transaction (remembered only once it commits).
#[derive(Debug, Default)]
pub struct GroupIds {
    fresh: HashMap<String, i64>,
}

impl Ids {
    /// An empty cache of `dictionary`.
    pub fn new(dictionary: Dictionary) -> Self {
        Self {
            dictionary,
            committed: HashMap::new(),
        }
    }

    /// Numbers for every value in `values` (empty values have none), adding unknown values
    /// in the caller's transaction. Values are added in sorted order, so two PostgreSQL
    /// replicas adding the same ones wait for each other instead of deadlocking.
    pub async fn resolve<'a>(
        &self,
        txn: &impl ConnectionTrait,
        values: impl Iterator<Item = &'a str>,
    ) -> Result<GroupIds, StoreError> {
        let mut missing: Vec<&str> = values
            .filter(|value| !value.is_empty() && !self.committed.contains_key(*value))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        missing.sort_unstable();
        let table = self.dictionary.table();
        let mut fresh = HashMap::with_capacity(missing.len());
        for chunk in missing.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert
                .into_table(table.clone())
                .columns([Alias::new("value")])
                .on_conflict(
                    OnConflict::column(Alias::new("value"))
                        .do_nothing()
                        .to_owned(),
                );
            for value in chunk {
                insert
                    .values([(*value).into()])
                    .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?;
            }
            let backend = txn.get_database_backend();
            txn.execute(backend.build(&insert)).await?;
            let select = Query::select()
                .columns([Alias::new("id"), Alias::new("value")])
                .from(table.clone())
                .and_where(Expr::col(Alias::new("value")).is_in(chunk.iter().copied()))
                .to_owned();
            for row in txn.query_all(backend.build(&select)).await? {
                fresh.insert(row.try_get::<String>("", "value")?, row.try_get("", "id")?);
            }
        }
        Ok(GroupIds { fresh })
    }

    /// The number of `value` for a row of the group `group` was resolved for.
    pub fn id(&self, group: &GroupIds, value: &str) -> Option<i64> {
        if value.is_empty() {
            return None;
        }
        self.committed
            .get(value)
            .or_else(|| group.fresh.get(value))
            .copied()
    }

    /// Remembers a committed group's new values.
    pub fn committed(&mut self, group: GroupIds) {
        if self.committed.len() + group.fresh.len() > self.dictionary.cache_values() {
            self.committed.clear();
        }
        self.committed.extend(group.fresh);
    }
}

/// Where the text of a number is: a table keyed by `id`, and its column. A dictionary's is
/// its `value`; a key label's name and prefix are two more (`store::labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spelling {
    /// The table.
    pub table: &'static str,
    /// The column holding the text.
    pub column: &'static str,
}

impl From<Dictionary> for Spelling {
    fn from(dictionary: Dictionary) -> Self {
        Self {
            table: dictionary.table_name(),
            column: "value",
        }
    }
}

/// The text of each number, for several dictionaries (or label columns) at once: one
/// statement (per 500 numbers of each), so that a page spells its agents, keys and labels
/// in one round trip.
pub async fn texts_of<S: Into<Spelling>, const N: usize>(
    db: &impl ConnectionTrait,
    wanted: [(S, Vec<i64>); N],
) -> Result<[HashMap<i64, String>; N], StoreError> {
    let mut texts: [HashMap<i64, String>; N] = std::array::from_fn(|_| HashMap::new());
    let mut parts: Vec<SelectStatement> = Vec::new();
    for (index, (spelling, ids)) in wanted.into_iter().enumerate() {
        let spelling: Spelling = spelling.into();
        let ids: Vec<i64> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for chunk in ids.chunks(CHUNK) {
            parts.push(
                Query::select()
                    .expr_as(Expr::val(index as i64), Alias::new("part"))
                    .column(Alias::new("id"))
                    .expr_as(Expr::col(Alias::new(spelling.column)), Alias::new("value"))
                    .from(Alias::new(spelling.table))
                    .and_where(Expr::col(Alias::new("id")).is_in(chunk.iter().copied()))
                    .to_owned(),
            );
        }
    }
    let mut parts = parts.into_iter();
    let Some(mut select) = parts.next() else {
        return Ok(texts);
    };
    for part in parts {
        select.union(UnionType::All, part);
    }
    let backend = db.get_database_backend();
    for row in db.query_all(backend.build(&select)).await? {
        let part: i64 = row.try_get("", "part")?;
        if let Some(texts) = usize::try_from(part).ok().and_then(|i| texts.get_mut(i)) {
            texts.insert(row.try_get("", "id")?, row.try_get::<String>("", "value")?);
        }
    }
    Ok(texts)
}

/// The number of `value`, if ingest ever added it (an account that never sent a record has
/// none, and so no rows).
pub async fn find(
    db: &impl ConnectionTrait,
    dictionary: Dictionary,
    value: &str,
) -> Result<Option<i64>, StoreError> {
    let select = Query::select()
        .column(Alias::new("id"))
        .from(dictionary.table())
        .and_where(Expr::col(Alias::new("value")).eq(value))
        .to_owned();
    let backend = db.get_database_backend();
    match db.query_one(backend.build(&select)).await? {
        Some(row) => Ok(Some(row.try_get("", "id")?)),
        None => Ok(None),
    }
}

/// The condition "`column` holds the number of one of `values`" in `dictionary`, looked up
/// by the statement itself: a value never added matches nothing. One value is compared to a
/// scalar subquery, which both planners evaluate once and use like a constant, so an index
/// led by the account and the column still yields rows in its order; several are an `IN`.
pub fn holds_number_of(
    column: impl IntoColumnRef,
    dictionary: Dictionary,
    values: &[&str],
) -> SimpleExpr {
    let value = Expr::col(Alias::new("value"));
    match values {
        [one] => {
            let numbers = numbers_where(dictionary, value.eq(*one));
            let scalar = SimpleExpr::SubQuery(None, Box::new(numbers.into_sub_query_statement()));
            Expr::col(column).eq(scalar)
        }
        _ => Expr::col(column).in_subquery(numbers_where(
            dictionary,
            value.is_in(values.iter().copied()),
        )),
    }
}

/// `SELECT id FROM` the dictionary `WHERE matches` (a condition on its unqualified `value`),
/// for `number IN (…)`: a filter or search on a text the rows hold as a number tries the
/// dictionary's values once, not each row's.
pub fn numbers_where(dictionary: Dictionary, matches: impl IntoCondition) -> SelectStatement {
    Query::select()
        .column(Alias::new("id"))
        .from(dictionary.table())
        .cond_where(matches)
        .to_owned()
}

/// The text of the number in `table`'s `column` (a scalar subquery over `dictionary`), for
/// a statement that reads the number.
pub fn spelled(dictionary: Dictionary, table: &str, column: &str) -> SimpleExpr {
    Expr::cust(format!(
        r#"(SELECT "value" FROM "{}" WHERE "id" = "{table}"."{column}")"#,
        dictionary.table_name()
    ))
}

/// The number of an account, if it ever sent a record.
pub async fn account_no(
    db: &impl ConnectionTrait,
    account_id: &str,
) -> Result<Option<i64>, StoreError> {
    find(db, Dictionary::Accounts, account_id).await
}

#[cfg(test)]
mod tests {
    use sea_orm::TransactionTrait;

    use super::*;
    use crate::store::test_count as count;

    #[tokio::test]
    async fn each_value_is_stored_once_and_reads_back() {
        let (_dir, db) = crate::store::test_database().await;
        let mut agents = Ids::new(Dictionary::UserAgents);

        let txn = db.begin().await.unwrap();
        let group = agents
            .resolve(&txn, ["curl/8", "", "curl/8", "node/20"].into_iter())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let curl = agents.id(&group, "curl/8").unwrap();
        let node = agents.id(&group, "node/20").unwrap();
        assert_ne!(curl, node);
        assert_eq!(agents.id(&group, ""), None);
        agents.committed(group);
        assert_eq!(count(&db, "user_agents").await, 2);

        // A known value costs no statement and keeps its id; a new one is added.
        let txn = db.begin().await.unwrap();
        let group = agents
            .resolve(&txn, ["curl/8", "python/3"].into_iter())
            .await
            .unwrap();
        assert_eq!(group.fresh.len(), 1);
        assert_eq!(agents.id(&group, "curl/8"), Some(curl));
        let python = agents.id(&group, "python/3").unwrap();
        txn.commit().await.unwrap();

        let [texts] = texts_of(&db, [(Dictionary::UserAgents, vec![curl, python, curl])])
            .await
            .unwrap();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[&curl], "curl/8");
        assert_eq!(texts[&python], "python/3");
    }

    #[tokio::test]
    async fn texts_of_several_dictionaries_keep_each_dictionarys_numbers_apart() {
        let (_dir, db) = crate::store::test_database().await;
        db.execute_unprepared(
            "INSERT INTO user_agents (id, value) VALUES (1, 'curl/8'), (2, 'node/20'); \
             INSERT INTO api_key_numbers (id, value) VALUES (1, 'key_a'), (3, 'key_c')",
        )
        .await
        .unwrap();
        let [agents, keys, none] = texts_of(
            &db,
            [
                (Dictionary::UserAgents, vec![1, 2, 1]),
                (Dictionary::ApiKeys, vec![1, 3, 4]),
                (Dictionary::Endpoints, Vec::new()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            agents,
            HashMap::from([(1, "curl/8".into()), (2, "node/20".into())])
        );
        assert_eq!(
            keys,
            HashMap::from([(1, "key_a".into()), (3, "key_c".into())])
        );
        assert!(none.is_empty());
        // Nothing asked, no statement needed.
        let [empty] = texts_of(&db, [(Dictionary::ApiKeys, Vec::new())])
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn account_numbers_are_found_once_committed() {
        let (_dir, db) = crate::store::test_database().await;
        assert_eq!(account_no(&db, "acct_a").await.unwrap(), None);
        let mut accounts = Ids::new(Dictionary::Accounts);
        let txn = db.begin().await.unwrap();
        let group = accounts
            .resolve(&txn, ["acct_a", "acct_b", "acct_a"].into_iter())
            .await
            .unwrap();
        let a = accounts.id(&group, "acct_a").unwrap();
        txn.commit().await.unwrap();
        accounts.committed(group);
        assert_eq!(account_no(&db, "acct_a").await.unwrap(), Some(a));
        assert_ne!(account_no(&db, "acct_b").await.unwrap(), Some(a));
        // Only the accounts' dictionary grew.
        assert_eq!(count(&db, "account_numbers").await, 2);
        assert_eq!(count(&db, "user_agents").await, 0);
    }

    #[tokio::test]
    async fn a_value_added_by_a_rolled_back_group_is_not_remembered() {
        let (_dir, db) = crate::store::test_database().await;
        let agents = Ids::new(Dictionary::UserAgents);
        let txn = db.begin().await.unwrap();
        let group = agents.resolve(&txn, ["gone/1"].into_iter()).await.unwrap();
        assert!(agents.id(&group, "gone/1").is_some());
        txn.rollback().await.unwrap();
        drop(group);
        assert_eq!(count(&db, "user_agents").await, 0);

        // Another cache (a second replica) finds a value the first one committed.
        let mut first = Ids::new(Dictionary::UserAgents);
        let txn = db.begin().await.unwrap();
        let group = first.resolve(&txn, ["kept/1"].into_iter()).await.unwrap();
        let id = first.id(&group, "kept/1");
        txn.commit().await.unwrap();
        first.committed(group);
        let second = Ids::new(Dictionary::UserAgents);
        let txn = db.begin().await.unwrap();
        let group = second.resolve(&txn, ["kept/1"].into_iter()).await.unwrap();
        assert_eq!(second.id(&group, "kept/1"), id);
        txn.commit().await.unwrap();
        assert_eq!(count(&db, "user_agents").await, 1);
    }
}
