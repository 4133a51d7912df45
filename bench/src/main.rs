//! `reqlog-bench`: the workloads of shared/PERFORMANCE.md, each beside a baseline measured in
//! the same run on the same rows. It drives a real `reqlog serve` process over gRPC; client
//! and server share this machine's cores, and the output says so.

mod data;
mod lifecycle;
mod server;
mod workloads;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// W1: batch ingest through RecordRequests vs a bare-table insert.
    Ingest,
    /// W2: unary RecordRequest from 64 callers vs a no-op handler and the naive design.
    Unary,
    /// W3: ListLogs pages, sorts, searches and filters vs hand-written SQL.
    List,
    /// W4: ExportLogs CSV of one account holding every row vs reading them straight to CSV.
    Export,
    /// W5: purge a key, sweep half the rows, ingest latency during the sweep vs raw DELETEs.
    Purge,
    /// W6: bytes on disk per row vs the CSV export's size.
    Storage,
    /// Every workload above, sharing one ingested data set.
    All,
}

/// Which database the server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

#[derive(Debug, Parser)]
#[command(name = "reqlog-bench", about)]
struct Cli {
    /// The workload.
    #[arg(value_enum)]
    workload: Workload,
    /// Rows in the data set.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// The backend.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Seconds each phase of the unary workload runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Timed repetitions of each list query.
    #[arg(long, default_value_t = 21)]
    repeat: usize,
    /// Where the PostgreSQL backend creates its databases.
    #[arg(
        long,
        env = "REQLOG_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Writes the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The data set's seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print goals but never fail on them (CI's reduced runs).
    #[arg(long)]
    no_goals: bool,
    /// Unary only: load this already running server instead (for profiling), then stop.
    #[arg(long)]
    external: Option<String>,
}

/// One measured figure beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figure {
    /// `ingest`, `unary`, `list`, `storage`.
    pub(crate) workload: &'static str,
    /// What exactly was measured.
    pub(crate) case: String,
    /// The backend.
    pub(crate) backend: Backend,
    /// reqlog's figure.
    pub(crate) value: f64,
    /// The baseline's figure, measured in the same run.
    pub(crate) baseline: f64,
    /// `value / baseline`.
    pub(crate) ratio: f64,
    /// The goal, as PERFORMANCE.md states it.
    pub(crate) goal: String,
    /// Whether the goal was met.
    pub(crate) met: bool,
    /// The unit of `value` and `baseline`.
    pub(crate) unit: &'static str,
}

/// Shared settings of a run.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The backend.
    pub(crate) backend: Backend,
    /// Rows.
    pub(crate) rows: usize,
    /// Seed.
    pub(crate) seed: u64,
    /// Unary seconds.
    pub(crate) seconds: u64,
    /// List repetitions.
    pub(crate) repeat: usize,
    /// PostgreSQL admin URL.
    pub(crate) postgres_url: String,
    /// Scratch directory.
    pub(crate) dir: PathBuf,
    /// The `reqlog` binary.
    pub(crate) binary: PathBuf,
    /// "now" for the data set, fixed for the run.
    pub(crate) now_seconds: i64,
}

fn print_table(figures: &[Figure]) {
    println!(
        "\n{:<8} {:<44} {:<8} {:>14} {:>14} {:>8}  {:<22} unit",
        "workload", "case", "backend", "reqlog", "baseline", "ratio", "goal"
    );
    for f in figures {
        println!(
            "{:<8} {:<44} {:<8} {:>14.2} {:>14.2} {:>8.3}  {:<22} {}{}",
            f.workload,
            f.case,
            format!("{:?}", f.backend).to_lowercase(),
            f.value,
            f.baseline,
            f.ratio,
            f.goal,
            f.unit,
            if f.met { "" } else { "  (goal missed)" }
        );
    }
    println!(
        "\nclient and server share this machine's {} cores; figures move from run to run, ratios less so",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reqlog-bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The run's scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("reqlog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("scratch dir: {e}"))?;
    // Removed however the run ends: an error or `--external` left one behind each time.
    let _scratch = Scratch(dir.clone());
    let ctx = Context {
        backend: cli.backend,
        rows: cli.rows,
        seed: cli.seed,
        seconds: cli.seconds,
        repeat: cli.repeat.max(1),
        postgres_url: cli.postgres_url,
        dir: dir.clone(),
        binary: server::reqlog_binary()?,
        now_seconds: workloads::now_seconds(),
    };
    let mut figures = Vec::new();
    if let Some(url) = &cli.external {
        let (rate, p50, p99) = workloads::unary_load(url, &ctx, 1).await?;
        println!("{rate:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
        return Ok(());
    }
    match cli.workload {
        Workload::Unary => figures.extend(workloads::unary(&ctx).await?),
        Workload::Export => figures.extend(lifecycle::export(&ctx).await?),
        Workload::Purge => figures.extend(lifecycle::purge(&ctx).await?),
        Workload::Ingest | Workload::List | Workload::Storage | Workload::All => {
            let (ingest, db) = workloads::ingest(&ctx).await?;
            if matches!(cli.workload, Workload::Ingest | Workload::All) {
                figures.extend(ingest);
            }
            if matches!(cli.workload, Workload::List | Workload::All) {
                figures.extend(workloads::list(&ctx, &db).await?);
            }
            if matches!(cli.workload, Workload::Storage | Workload::All) {
                figures.extend(workloads::storage(&ctx, &db).await?);
            }
            if cli.workload == Workload::All {
                figures.extend(workloads::unary(&ctx).await?);
            }
            db.remove().await;
            if cli.workload == Workload::All {
                figures.extend(lifecycle::export(&ctx).await?);
                figures.extend(lifecycle::purge(&ctx).await?);
            }
        }
    }
    print_table(&figures);
    if let Some(path) = cli.json {
        let json = serde_json::to_string_pretty(&figures).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let missed = figures.iter().filter(|f| !f.met).count();
    if missed > 0 && !cli.no_goals {
        eprintln!("{missed} goal(s) missed");
    }
    Ok(())
}
