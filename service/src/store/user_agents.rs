//! The user-agent dictionary: rows hold an id in `user_agents` instead of the text, since a
//! few distinct strings repeat on every row and no query filters, sorts or searches on them
//! (W6, BENCHMARKS.md). A value is added the first time it is seen and never changed or
//! removed, so an id names the same string forever.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{Alias, Expr, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbErr};

use super::StoreError;

/// Values one statement carries: well under either backend's limit on bound parameters.
const CHUNK: usize = 500;
/// Values the writer remembers; past this the cache starts over (a gateway sending a new
/// agent on every call must not grow the writer's memory without bound).
const CACHE_VALUES: usize = 4_096;

fn table() -> Alias {
    Alias::new("user_agents")
}

/// The writer's cache of committed values, and its lookups for one group.
#[derive(Debug, Default)]
pub struct AgentIds {
    committed: HashMap<String, i64>,
}

/// The ids a group's rows use: those already cached and those found or added in this
/// group's transaction (remembered only once it commits).
#[derive(Debug, Default)]
pub struct GroupAgents {
    fresh: HashMap<String, i64>,
}

impl AgentIds {
    /// Ids for every agent in `agents` (empty agents have none), adding unknown values in
    /// the caller's transaction. Values are added in sorted order, so two PostgreSQL
    /// replicas adding the same ones wait for each other instead of deadlocking.
    pub async fn resolve<'a>(
        &self,
        txn: &impl ConnectionTrait,
        agents: impl Iterator<Item = &'a str>,
    ) -> Result<GroupAgents, StoreError> {
        let mut missing: Vec<&str> = agents
            .filter(|agent| !agent.is_empty() && !self.committed.contains_key(*agent))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        missing.sort_unstable();
        let mut fresh = HashMap::with_capacity(missing.len());
        for chunk in missing.chunks(CHUNK) {
            let mut insert = Query::insert();
            insert
                .into_table(table())
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
                .from(table())
                .and_where(Expr::col(Alias::new("value")).is_in(chunk.iter().copied()))
                .to_owned();
            for row in txn.query_all(backend.build(&select)).await? {
                fresh.insert(row.try_get::<String>("", "value")?, row.try_get("", "id")?);
            }
        }
        Ok(GroupAgents { fresh })
    }

    /// The id of `agent` for a row of the group `group` was resolved for.
    pub fn id(&self, group: &GroupAgents, agent: &str) -> Option<i64> {
        if agent.is_empty() {
            return None;
        }
        self.committed
            .get(agent)
            .or_else(|| group.fresh.get(agent))
            .copied()
    }

    /// Remembers a committed group's new values.
    pub fn committed(&mut self, group: GroupAgents) {
        if self.committed.len() + group.fresh.len() > CACHE_VALUES {
            self.committed.clear();
        }
        self.committed.extend(group.fresh);
    }
}

/// The text of each id in `ids`.
pub async fn texts(
    db: &impl ConnectionTrait,
    ids: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, String>, StoreError> {
    let ids: Vec<i64> = ids.collect::<HashSet<_>>().into_iter().collect();
    let mut texts = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let select = Query::select()
            .columns([Alias::new("id"), Alias::new("value")])
            .from(table())
            .and_where(Expr::col(Alias::new("id")).is_in(chunk.iter().copied()))
            .to_owned();
        let backend = db.get_database_backend();
        for row in db.query_all(backend.build(&select)).await? {
            texts.insert(row.try_get("", "id")?, row.try_get::<String>("", "value")?);
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use sea_orm::TransactionTrait;

    use super::*;
    use crate::store::test_count as count;

    #[tokio::test]
    async fn each_value_is_stored_once_and_reads_back() {
        let (_dir, db) = crate::store::test_database().await;
        let mut agents = AgentIds::default();

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

        let texts = texts(&db, [curl, python, curl].into_iter()).await.unwrap();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[&curl], "curl/8");
        assert_eq!(texts[&python], "python/3");
    }

    #[tokio::test]
    async fn a_value_added_by_a_rolled_back_group_is_not_remembered() {
        let (_dir, db) = crate::store::test_database().await;
        let agents = AgentIds::default();
        let txn = db.begin().await.unwrap();
        let group = agents.resolve(&txn, ["gone/1"].into_iter()).await.unwrap();
        assert!(agents.id(&group, "gone/1").is_some());
        txn.rollback().await.unwrap();
        drop(group);
        assert_eq!(count(&db, "user_agents").await, 0);

        // Another cache (a second replica) finds a value the first one committed.
        let mut first = AgentIds::default();
        let txn = db.begin().await.unwrap();
        let group = first.resolve(&txn, ["kept/1"].into_iter()).await.unwrap();
        let id = first.id(&group, "kept/1");
        txn.commit().await.unwrap();
        first.committed(group);
        let second = AgentIds::default();
        let txn = db.begin().await.unwrap();
        let group = second.resolve(&txn, ["kept/1"].into_iter()).await.unwrap();
        assert_eq!(second.id(&group, "kept/1"), id);
        txn.commit().await.unwrap();
        assert_eq!(count(&db, "user_agents").await, 1);
    }
}
