//! SeaORM entities, one module per table. Times are microseconds since the epoch (UTC),
//! except `usage_stats.bucket_start`, which is seconds.

/// One recorded request.
pub mod log_entry {
    use sea_orm::entity::prelude::*;

    /// A stored row of `log_entries`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "log_entries")]
    pub struct Model {
        /// Assigned by the writer; the `LogEntry.id` clients see.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        /// The account's number in `account_numbers`.
        pub account_no: i32,
        /// The account's id: not a column of the table, filled in by `store::logs::page`
        /// (every query names its account).
        #[sea_orm(ignore)]
        pub account_id: String,
        /// When the request happened.
        pub ts: i64,
        /// The idempotency key, if any.
        #[sea_orm(column_type = "Text", nullable)]
        pub request_id: Option<RequestId>,
        /// The API key id's number in `api_key_numbers`.
        pub api_key_no: i32,
        /// The API key id: not a column of the table, filled in by `store::logs::page` from
        /// `api_key_numbers`.
        #[sea_orm(ignore)]
        pub api_key_id: String,
        /// The key's name and prefix when the request was made: their number in
        /// `api_key_labels`.
        pub api_key_label_no: i32,
        /// The key's name when the request was made: not a column of the table, filled in
        /// by `store::logs::page` from `api_key_labels`.
        #[sea_orm(ignore)]
        pub api_key_name: String,
        /// The key's prefix when the request was made (as the name).
        #[sea_orm(ignore)]
        pub api_key_prefix: String,
        /// Upper-case HTTP method.
        pub method: String,
        /// The path's number in `endpoint_numbers`.
        pub endpoint_no: i32,
        /// The path: not a column of the table, filled in by `store::logs::page` from
        /// `endpoint_numbers`.
        #[sea_orm(ignore)]
        pub endpoint: String,
        /// The sanitized query string.
        pub query_params: Option<String>,
        /// The HTTP status.
        pub status_code: i32,
        /// The platform error code.
        pub error_code: Option<String>,
        /// The digest of the client IP (32 bytes), or none; the API shows it as hex.
        pub ip_hash: Vec<u8>,
        /// The user agent's id in `user_agents`; none when the gateway sent none.
        pub user_agent_id: Option<i64>,
        /// The user agent's text: not a column of the table, filled in by
        /// `store::logs::page` from `user_agents`.
        #[sea_orm(ignore)]
        pub user_agent: String,
        /// Latency in milliseconds.
        pub duration_ms: i64,
    }

    /// A stored request id, as the client sent it. SQLite stores an id that is lower-case
    /// hex of even length as its bytes (`store::writer::packed_request_id`); read back, the
    /// bytes are spelled as lower-case hex again, which is the text that came. PostgreSQL
    /// stores text.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RequestId(pub String);

    impl sea_orm::TryGetable for RequestId {
        fn try_get_by<I: sea_orm::ColIdx>(
            res: &QueryResult,
            index: I,
        ) -> Result<Self, sea_orm::TryGetError> {
            // sqlx refuses bytes read as text; a proxy row (the writer's own connection) says
            // so as a NULL. Either way the bytes are read as bytes, and a NULL is one for both.
            String::try_get_by(res, index)
                .map(Self)
                .or_else(|text_error| {
                    Vec::<u8>::try_get_by(res, index)
                        .map(|bytes| Self(crate::domain::ip::to_hex(&bytes)))
                        .map_err(|_| text_error)
                })
        }
    }

    impl sea_orm::sea_query::ValueType for RequestId {
        fn try_from(value: Value) -> Result<Self, sea_orm::sea_query::ValueTypeErr> {
            match value {
                Value::String(Some(text)) => Ok(Self(*text)),
                Value::Bytes(Some(bytes)) => Ok(Self(crate::domain::ip::to_hex(&bytes))),
                _ => Err(sea_orm::sea_query::ValueTypeErr),
            }
        }

        fn type_name() -> String {
            "RequestId".to_owned()
        }

        fn array_type() -> sea_orm::sea_query::ArrayType {
            sea_orm::sea_query::ArrayType::String
        }

        fn column_type() -> ColumnType {
            ColumnType::Text
        }
    }

    impl From<RequestId> for Value {
        fn from(id: RequestId) -> Self {
            id.0.into()
        }
    }

    impl sea_orm::sea_query::Nullable for RequestId {
        fn null() -> Value {
            Value::String(None)
        }
    }

    /// `log_entries` relates to nothing through foreign keys (keys may be unknown).
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Idempotency keys by UTC day.
pub mod request_id {
    use sea_orm::entity::prelude::*;

    /// A stored row of `request_ids`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "request_ids")]
    pub struct Model {
        /// The record's UTC day number.
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: i64,
        /// The account's number in `account_numbers`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_no: i32,
        /// The gateway's idempotency key, as `domain::record::request_key` stores it.
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_key: Vec<u8>,
        /// The row stored first under this key.
        pub log_id: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// API keys as key management last described them.
pub mod api_key {
    use sea_orm::entity::prelude::*;

    /// A stored row of `api_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        /// The account.
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        /// The key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub api_key_id: String,
        /// The key's current name.
        pub name: String,
        /// The key's current prefix.
        pub prefix: String,
        /// `ACTIVE`, `ROTATED`, `EXPIRED` or `INACTIVE`.
        pub status: String,
        /// When the key expires.
        pub expires_at: Option<i64>,
        /// When the key was purged; later records for it are refused.
        pub deleted_at: Option<i64>,
        /// Last change.
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Accounts' plans.
pub mod account {
    use sea_orm::entity::prelude::*;

    /// A stored row of `accounts`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        /// The account.
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        /// `FREE`, `STARTER`, `PRO`, `SCALE` or `ENTERPRISE`.
        pub plan: String,
        /// Overrides the plan's retention window, in days.
        pub retention_days_override: Option<i32>,
        /// Last change.
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Hourly usage counters.
pub mod usage_stat {
    use sea_orm::entity::prelude::*;

    /// A stored row of `usage_stats`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_stats")]
    pub struct Model {
        /// The account's number in `account_numbers`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_no: i32,
        /// Start of the UTC hour, seconds since the epoch.
        #[sea_orm(primary_key, auto_increment = false)]
        pub bucket_start: i64,
        /// The API key id's number in `api_key_numbers`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub api_key_no: i32,
        /// The path's number in `endpoint_numbers`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub endpoint_no: i32,
        /// Upper-case method.
        #[sea_orm(primary_key, auto_increment = false)]
        pub method: String,
        /// The HTTP status.
        #[sea_orm(primary_key, auto_increment = false)]
        pub status_code: i32,
        /// Requests.
        pub request_count: i64,
        /// Requests with status 400 or above.
        pub error_count: i64,
        /// Sum of latencies.
        pub total_duration_ms: i64,
        /// Largest latency.
        pub max_duration_ms: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Server-wide settings shared by every replica.
pub mod setting {
    use sea_orm::entity::prelude::*;

    /// A stored row of `settings`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "settings")]
    pub struct Model {
        /// The setting's name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        /// Its value.
        pub value: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
