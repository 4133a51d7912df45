//! The activity record: who purged, changed a plan or a key, or swept, and when. A table of
//! its own, so the retention sweep (which deletes from `log_entries`) never touches it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Activity {
    Table,
    Id,
    At,
    Principal,
    Action,
    AccountId,
    ApiKeyId,
    RowsAffected,
    Detail,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // `at` is microseconds since the Unix epoch, UTC; `id` orders entries (newest last).
        manager
            .create_table(
                Table::create()
                    .table(Activity::Table)
                    .col(
                        ColumnDef::new(Activity::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Activity::At).big_integer().not_null())
                    .col(ColumnDef::new(Activity::Principal).text().not_null())
                    .col(ColumnDef::new(Activity::Action).text().not_null())
                    .col(ColumnDef::new(Activity::AccountId).text().not_null())
                    .col(ColumnDef::new(Activity::ApiKeyId).text().not_null())
                    .col(
                        ColumnDef::new(Activity::RowsAffected)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Activity::Detail).text().not_null())
                    .to_owned(),
            )
            .await?;
        // ListActivity for one account, newest first.
        manager
            .create_index(
                Index::create()
                    .name("idx_activity_account_id")
                    .table(Activity::Table)
                    .col(Activity::AccountId)
                    .col(Activity::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Activity::Table).to_owned())
            .await
    }
}
