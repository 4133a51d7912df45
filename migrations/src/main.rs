//! `reqlog-migrate`: applies, reverts or lists reqlog's migrations, for operators who run
//! `reqlog serve --no-migrate`.

use clap::{Parser, Subcommand};
use reqlog_migrations::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::Database;

#[derive(Parser)]
#[command(name = "reqlog-migrate", version, about)]
struct Cli {
    /// `sqlite://reqlog.db?mode=rwc` or `postgres://user@host/db`.
    #[arg(
        long,
        env = "REQLOG_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://reqlog.db?mode=rwc"
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Applies every pending migration.
    Up,
    /// Reverts the last `n` applied migrations.
    Down {
        /// How many migrations to revert.
        #[arg(short, default_value_t = 1)]
        n: u32,
    },
    /// Lists every migration and whether it is applied.
    Status,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let db = Database::connect(&cli.database_url).await?;
    match cli.command {
        Command::Up => Migrator::up(&db, None).await?,
        Command::Down { n } => Migrator::down(&db, Some(n)).await?,
        Command::Status => {
            for migration in Migrator::get_migration_with_status(&db).await? {
                println!("{}\t{}", migration.name(), migration.status());
            }
        }
    }
    db.close().await?;
    Ok(())
}
