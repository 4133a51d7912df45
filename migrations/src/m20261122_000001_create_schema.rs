use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum LogEntries {
    Table,
    Id,
    AccountNo,
    Ts,
    RequestId,
    ApiKeyId,
    ApiKeyName,
    ApiKeyPrefix,
    Method,
    Endpoint,
    QueryParams,
    StatusCode,
    ErrorCode,
    IpHash,
    UserAgentId,
    DurationMs,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    AccountId,
    ApiKeyId,
    Name,
    Prefix,
    Status,
    ExpiresAt,
    DeletedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    AccountId,
    Plan,
    RetentionDaysOverride,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UsageStats {
    Table,
    AccountNo,
    BucketStart,
    ApiKeyId,
    Endpoint,
    Method,
    StatusCode,
    RequestCount,
    ErrorCount,
    TotalDurationMs,
    MaxDurationMs,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Name,
    Value,
}

/// Text that is sorted or compared must sort bytewise on every backend: SQLite's default
/// (BINARY) already does; PostgreSQL needs `COLLATE "C"`.
fn text(backend: DatabaseBackend, column: impl IntoIden) -> ColumnDef {
    let mut def = ColumnDef::new(column);
    def.text();
    if backend == DatabaseBackend::Postgres {
        def.extra("COLLATE \"C\"");
    }
    def
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();

        // Log rows. The writer reserves ids itself and inserts a whole group with multi-row
        // statements; `ts` is microseconds since the Unix epoch, UTC; ids of purged rows are
        // never handed out again. `ip_hash` holds the digest's 32 bytes (none without an IP):
        // as 64 hex characters it was a quarter of an SQLite row; byte order is the order of
        // its lower-case hex, so sorting and prefix ranges work on the bytes. The user agent
        // is an id in `user_agents` (none when empty): a few distinct strings repeat on
        // every row, and no query filters, sorts or searches on them. The account is its
        // number in `account_numbers`: every query names one account, so it is looked up
        // once per request (or per group, on ingest), never joined per row.
        match backend {
            // --- SQLite: the table is clustered on (account_no, ts, id) (WITHOUT ROWID). ---
            // An account's rows sit together in time order, so the default order, time
            // ranges and the search walk read consecutive pages of the table itself instead
            // of an index plus one table lookup per row (the search walk took 2.3x less CPU
            // measured on 1M rows), and no separate rowid tree is written per insert. Ids
            // come from `log_id_sequence` (AUTOINCREMENT needs a rowid).
            DatabaseBackend::Sqlite => {
                let connection = manager.get_connection();
                connection
                    .execute_unprepared(
                        "CREATE TABLE log_entries (
                            id INTEGER NOT NULL,
                            account_no INTEGER NOT NULL,
                            ts INTEGER NOT NULL,
                            request_id TEXT NULL,
                            api_key_id TEXT NOT NULL,
                            api_key_name TEXT NOT NULL,
                            api_key_prefix TEXT NOT NULL,
                            method TEXT NOT NULL,
                            endpoint TEXT NOT NULL,
                            query_params TEXT NULL,
                            status_code INTEGER NOT NULL,
                            error_code TEXT NULL,
                            ip_hash BLOB NOT NULL,
                            user_agent_id INTEGER NULL,
                            duration_ms INTEGER NOT NULL,
                            PRIMARY KEY (account_no, ts, id)
                        ) WITHOUT ROWID",
                    )
                    .await?;
                connection
                    .execute_unprepared(
                        "CREATE TABLE log_id_sequence (
                            name TEXT NOT NULL PRIMARY KEY,
                            last_id INTEGER NOT NULL
                        )",
                    )
                    .await?;
                connection
                    .execute_unprepared(
                        "INSERT INTO log_id_sequence (name, last_id) VALUES ('log_entries', 0)",
                    )
                    .await?;
            }
            // --- PostgreSQL: a heap in arrival order with a bigserial id ---
            _ => {
                manager
                    .create_table(
                        Table::create()
                            .table(LogEntries::Table)
                            .col(
                                ColumnDef::new(LogEntries::Id)
                                    .big_integer()
                                    .not_null()
                                    .auto_increment()
                                    .primary_key(),
                            )
                            // Fixed-width columns first, widest first: after a text
                            // column an 8-byte value is padded to its alignment, which
                            // cost up to 16 bytes a row in the first order.
                            .col(ColumnDef::new(LogEntries::Ts).big_integer().not_null())
                            .col(ColumnDef::new(LogEntries::UserAgentId).big_integer().null())
                            .col(
                                ColumnDef::new(LogEntries::DurationMs)
                                    .big_integer()
                                    .not_null(),
                            )
                            .col(ColumnDef::new(LogEntries::StatusCode).integer().not_null())
                            .col(ColumnDef::new(LogEntries::AccountNo).integer().not_null())
                            .col(text(backend, LogEntries::RequestId).null())
                            .col(text(backend, LogEntries::ApiKeyId).not_null())
                            .col(text(backend, LogEntries::ApiKeyName).not_null())
                            .col(text(backend, LogEntries::ApiKeyPrefix).not_null())
                            .col(text(backend, LogEntries::Method).not_null())
                            .col(text(backend, LogEntries::Endpoint).not_null())
                            .col(text(backend, LogEntries::QueryParams).null())
                            .col(text(backend, LogEntries::ErrorCode).null())
                            .col(ColumnDef::new(LogEntries::IpHash).binary().not_null())
                            .to_owned(),
                    )
                    .await?;
                // Default order (timestamp, id) within an account, and time-range filters.
                // Keys are time-first within an account, so new rows land at the right
                // edge of the account's range.
                manager
                    .create_index(
                        Index::create()
                            .name("idx_log_entries_account_ts")
                            .table(LogEntries::Table)
                            .col(LogEntries::AccountNo)
                            .col(LogEntries::Ts)
                            .col(LogEntries::Id)
                            .to_owned(),
                    )
                    .await?;
            }
        }
        // The per-key filter, and PurgeForKey.
        manager
            .create_index(
                Index::create()
                    .name("idx_log_entries_account_key_ts")
                    .table(LogEntries::Table)
                    .col(LogEntries::AccountNo)
                    .col(LogEntries::ApiKeyId)
                    .col(LogEntries::Ts)
                    .col(LogEntries::Id)
                    .to_owned(),
            )
            .await?;
        if backend == DatabaseBackend::Sqlite {
            // Without statistics SQLite's planner guesses that an account holds ten rows and
            // walks the whole account (the clustered key) for a key filter. Typical shape
            // instead: many rows per account, fewer per key. A later ANALYZE replaces these.
            let connection = manager.get_connection();
            connection.execute_unprepared("ANALYZE").await?;
            connection
                .execute_unprepared(
                    "INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
                        ('log_entries', 'log_entries', '1000000 1000 1 1'),
                        ('log_entries', 'idx_log_entries_account_key_ts', '1000000 1000 100 1 1')",
                )
                .await?;
            connection
                .execute_unprepared("ANALYZE sqlite_schema")
                .await?;
        }

        // Idempotency keys, bucketed by UTC day of the record's timestamp: day first, so
        // inserts cluster at the newest day instead of landing at random points of one big
        // tree. A lookup checks the record's day and both neighbours (API.md's 24 h window).
        // The request id is kept as 16 bytes of its SHA-256 (`domain::record::request_key`):
        // the row holds the text, and this table only needs equality.
        match backend {
            // --- SQLite: the key table is its own index (WITHOUT ROWID) ---
            DatabaseBackend::Sqlite => {
                manager
                    .get_connection()
                    .execute_unprepared(
                        "CREATE TABLE request_ids (
                            day INTEGER NOT NULL,
                            account_no INTEGER NOT NULL,
                            request_key BLOB NOT NULL,
                            log_id INTEGER NOT NULL,
                            PRIMARY KEY (day, account_no, request_key)
                        ) WITHOUT ROWID",
                    )
                    .await?;
            }
            // --- PostgreSQL: the same table (a heap and its primary key) ---
            _ => {
                manager
                    .get_connection()
                    .execute_unprepared(
                        "CREATE TABLE request_ids (
                            day BIGINT NOT NULL,
                            account_no INTEGER NOT NULL,
                            request_key BYTEA NOT NULL,
                            log_id BIGINT NOT NULL,
                            PRIMARY KEY (day, account_no, request_key)
                        )",
                    )
                    .await?;
            }
        }

        // Dictionaries: strings stored once, rows holding their number. Ingest adds a value
        // the first time it is seen (`ON CONFLICT DO NOTHING`, so replicas may race); a value
        // is never changed or removed, so a number means the same string forever and may be
        // cached. `user_agents`: a few distinct strings on every row. `account_numbers`: the
        // account leads the keys of `log_entries`, `request_ids` and `usage_stats` (its text
        // was ~8 B more in each of five structures on SQLite); the numbers fit the INTEGER
        // columns that hold them (2^31 accounts).
        for table in ["user_agents", "account_numbers"] {
            let create = match backend {
                // --- SQLite ---
                DatabaseBackend::Sqlite => format!(
                    "CREATE TABLE {table} (
                        id INTEGER PRIMARY KEY,
                        value TEXT NOT NULL UNIQUE
                    )"
                ),
                // --- PostgreSQL ---
                _ => format!(
                    "CREATE TABLE {table} (
                        id BIGSERIAL PRIMARY KEY,
                        value TEXT COLLATE \"C\" NOT NULL UNIQUE
                    )"
                ),
            };
            manager.get_connection().execute_unprepared(&create).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(text(backend, ApiKeys::AccountId).not_null())
                    .col(text(backend, ApiKeys::ApiKeyId).not_null())
                    .col(text(backend, ApiKeys::Name).not_null())
                    .col(text(backend, ApiKeys::Prefix).not_null())
                    .col(text(backend, ApiKeys::Status).not_null())
                    .col(ColumnDef::new(ApiKeys::ExpiresAt).big_integer().null())
                    .col(ColumnDef::new(ApiKeys::DeletedAt).big_integer().null())
                    .col(ColumnDef::new(ApiKeys::UpdatedAt).big_integer().not_null())
                    .primary_key(
                        Index::create()
                            .col(ApiKeys::AccountId)
                            .col(ApiKeys::ApiKeyId),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(text(backend, Accounts::AccountId).not_null().primary_key())
                    .col(text(backend, Accounts::Plan).not_null())
                    .col(
                        ColumnDef::new(Accounts::RetentionDaysOverride)
                            .integer()
                            .null(),
                    )
                    .col(ColumnDef::new(Accounts::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;

        // Usage statistics per UTC hour (`bucket_start` in seconds) and every dimension;
        // day buckets and coarser groups are sums of these rows. Never touched by purge or
        // retention. How rows reach them differs by backend (the service's `store::usage`).
        let mut usage_stats = Table::create();
        if backend == DatabaseBackend::Sqlite {
            // The counters are stored in their key's tree: with a rowid table SQLite kept
            // the key twice (table and unique index, 59 + 53 B/row on 1M benchmark rows)
            // and each upsert wrote both.
            usage_stats.extra("WITHOUT ROWID");
        }
        manager
            .create_table(
                usage_stats
                    .table(UsageStats::Table)
                    // Fixed-width columns first (PostgreSQL pads an 8-byte value that
                    // follows text to its alignment); the key's order is the primary key's.
                    .col(
                        ColumnDef::new(UsageStats::BucketStart)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageStats::RequestCount)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageStats::ErrorCount)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageStats::TotalDurationMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageStats::MaxDurationMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageStats::StatusCode).integer().not_null())
                    .col(ColumnDef::new(UsageStats::AccountNo).integer().not_null())
                    .col(text(backend, UsageStats::ApiKeyId).not_null())
                    .col(text(backend, UsageStats::Endpoint).not_null())
                    .col(text(backend, UsageStats::Method).not_null())
                    .primary_key(
                        Index::create()
                            .col(UsageStats::AccountNo)
                            .col(UsageStats::BucketStart)
                            .col(UsageStats::ApiKeyId)
                            .col(UsageStats::Endpoint)
                            .col(UsageStats::Method)
                            .col(UsageStats::StatusCode),
                    )
                    .to_owned(),
            )
            .await?;

        // Server-wide settings, such as the page-token HMAC key, shared by every replica.
        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .col(text(backend, Settings::Name).not_null().primary_key())
                    .col(text(backend, Settings::Value).not_null())
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Settings::Table.into_iden(),
            UsageStats::Table.into_iden(),
            Accounts::Table.into_iden(),
            ApiKeys::Table.into_iden(),
            Alias::new("account_numbers").into_iden(),
            Alias::new("user_agents").into_iden(),
            Alias::new("request_ids").into_iden(),
            LogEntries::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        if manager.get_database_backend() == DatabaseBackend::Sqlite {
            manager
                .drop_table(
                    Table::drop()
                        .table(Alias::new("log_id_sequence"))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
