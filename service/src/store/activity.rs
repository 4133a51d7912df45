//! The activity record of administrative actions: written after each action, read by
//! `AdminService.ListActivity`. Its own table, which neither purge nor retention touches.

use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::StoreError;

/// The `activity` table.
pub mod entry {
    use sea_orm::entity::prelude::*;

    /// A stored row of `activity`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "activity")]
    pub struct Model {
        /// Increases with every entry.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// When the action finished, microseconds since the epoch.
        pub at: i64,
        /// Who acted.
        pub principal: String,
        /// What was done (`ActivityAction::as_str`).
        pub action: String,
        /// The account, or "".
        pub account_id: String,
        /// The key, or "".
        pub api_key_id: String,
        /// Log rows deleted.
        pub rows_affected: i64,
        /// The action's parameters.
        pub detail: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An entry to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    /// When the action finished, microseconds since the epoch.
    pub at: i64,
    /// Who acted.
    pub principal: String,
    /// What was done.
    pub action: &'static str,
    /// The account, or "".
    pub account_id: String,
    /// The key, or "".
    pub api_key_id: String,
    /// Log rows deleted.
    pub rows_affected: u64,
    /// The action's parameters.
    pub detail: String,
}

/// Appends entries (one transaction on the caller's connection; the writer's, in practice).
pub async fn record(
    db: &impl ConnectionTrait,
    entries: Vec<NewActivity>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows = entries.into_iter().map(|entry| entry::ActiveModel {
        id: NotSet,
        at: Set(entry.at),
        principal: Set(entry.principal),
        action: Set(entry.action.to_owned()),
        account_id: Set(entry.account_id),
        api_key_id: Set(entry.api_key_id),
        rows_affected: Set(i64::try_from(entry.rows_affected).unwrap_or(i64::MAX)),
        detail: Set(entry.detail),
    });
    entry::Entity::insert_many(rows).exec(db).await?;
    Ok(())
}

/// Up to `limit` entries, newest first, older than `before_id` when given; `account`
/// narrows to one account.
pub async fn list(
    db: &impl ConnectionTrait,
    account: Option<&str>,
    before_id: Option<i64>,
    limit: u64,
) -> Result<Vec<entry::Model>, StoreError> {
    let mut query = entry::Entity::find();
    if let Some(account) = account {
        query = query.filter(entry::Column::AccountId.eq(account));
    }
    if let Some(before) = before_id {
        query = query.filter(entry::Column::Id.lt(before));
    }
    Ok(query
        .order_by_desc(entry::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database;

    fn new(account: &str, n: u64) -> NewActivity {
        NewActivity {
            at: 1_000 + n as i64,
            principal: "ops".into(),
            action: "purge_for_key",
            account_id: account.into(),
            api_key_id: format!("key_{n}"),
            rows_affected: n,
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn entries_page_newest_first_per_account() {
        let (_dir, db) = test_database().await;
        record(
            &db,
            (0..5)
                .map(|n| new(if n % 2 == 0 { "a" } else { "b" }, n))
                .collect(),
        )
        .await
        .unwrap();
        let all = list(&db, None, None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.rows_affected).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0]
        );
        let first = list(&db, Some("a"), None, 2).await.unwrap();
        assert_eq!(
            first.iter().map(|e| e.rows_affected).collect::<Vec<_>>(),
            [4, 2]
        );
        let rest = list(&db, Some("a"), Some(first[1].id), 2).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.rows_affected).collect::<Vec<_>>(),
            [0]
        );
    }
}
