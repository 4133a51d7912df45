//! Server-wide settings kept in the database, so every replica and every restart agree.

use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait};

use super::StoreError;
use super::entity::setting;

const PAGE_TOKEN_KEY: &str = "page_token_hmac_key";

/// The key page tokens are sealed with: created at first start (32 random bytes), then read.
/// Insert-if-absent and read back, so replicas starting together end up with one key.
pub async fn page_token_key(db: &DatabaseConnection) -> Result<Vec<u8>, StoreError> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let insert = setting::Entity::insert(setting::ActiveModel {
        name: Set(PAGE_TOKEN_KEY.to_owned()),
        value: Set(crate::domain::ip::to_hex(&fresh)),
    })
    .on_conflict(
        OnConflict::column(setting::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .do_nothing()
    .exec(db)
    .await;
    insert?;
    let stored = setting::Entity::find_by_id(PAGE_TOKEN_KEY.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| corrupt("page-token key missing after insert"))?;
    crate::domain::ip::from_hex(&stored.value).ok_or_else(|| corrupt("page-token key is not hex"))
}

/// The integer setting `name` (0 when absent).
pub async fn integer(db: &impl ConnectionTrait, name: &str) -> Result<i64, StoreError> {
    let stored = setting::Entity::find_by_id(name.to_owned()).one(db).await?;
    Ok(stored.and_then(|row| row.value.parse().ok()).unwrap_or(0))
}

/// Sets the integer setting `name`.
pub async fn set_integer(
    db: &impl ConnectionTrait,
    name: &str,
    value: i64,
) -> Result<(), StoreError> {
    setting::Entity::insert(setting::ActiveModel {
        name: Set(name.to_owned()),
        value: Set(value.to_string()),
    })
    .on_conflict(
        OnConflict::column(setting::Column::Name)
            .update_column(setting::Column::Value)
            .to_owned(),
    )
    .exec(db)
    .await?;
    Ok(())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Database(sea_orm::DbErr::Custom(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_database;

    #[tokio::test]
    async fn the_key_is_created_once_and_then_kept() {
        let (_dir, db) = test_database().await;
        let first = page_token_key(&db).await.unwrap();
        let second = page_token_key(&db).await.unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(first, second);
    }
}
