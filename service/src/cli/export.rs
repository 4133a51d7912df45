//! `reqlog export`: a verified export to a file (renamed into place when complete) or to
//! stdout, with a progress line on stderr.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use reqlog_client::pb;

use super::{CliError, Connect, FilterArgs, time};

/// Export file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Comma-separated, with a header line.
    Csv,
    /// One JSON array.
    Json,
    /// One JSON object a line.
    Ndjson,
}

/// `reqlog export ACCOUNT [filters] [-o FILE]`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,

    #[command(flatten)]
    /// Which rows, in which order.
    pub filter: FilterArgs,

    /// File format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Csv)]
    pub format: Format,

    /// Write here (created or replaced only once the export is complete and verified);
    /// `-` or nothing writes to stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,

    /// Exactly these row ids (repeatable); the filter flags are then ignored.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,

    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Counts what has arrived and redraws a progress line on a terminal, at most 5 times a
/// second.
struct Progress {
    started: Instant,
    last_drawn: Instant,
    bytes: u64,
    lines: u64,
    live: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last_drawn: now,
            bytes: 0,
            lines: 0,
            live: !quiet && std::io::stderr().is_terminal(),
        }
    }

    fn chunk(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        self.lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        if self.live && self.last_drawn.elapsed() >= Duration::from_millis(200) {
            self.last_drawn = Instant::now();
            // Lines approximate rows while streaming (a header line or bracket aside).
            let line = self.line(self.lines);
            eprint!("\r\x1b[2K{line}");
        }
    }

    fn line(&self, rows: u64) -> String {
        let elapsed = self.started.elapsed();
        let rate = self.bytes as f64 / elapsed.as_secs_f64().max(0.001);
        format!(
            "{rows} rows, {} in {} ({}/s)",
            time::bytes(self.bytes),
            time::seconds(elapsed),
            time::bytes(rate as u64)
        )
    }

    fn finish(&self, summary: &pb::ExportSummary, destination: &str) {
        if self.live {
            eprint!("\r\x1b[2K");
        }
        let rows = u64::try_from(summary.row_count).unwrap_or_default();
        eprintln!("exported {} to {destination}", self.line(rows));
    }
}

pub(super) async fn run(args: ExportArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let format = match args.format {
        Format::Csv => pb::ExportFormat::Csv,
        Format::Json => pb::ExportFormat::Json,
        Format::Ndjson => pb::ExportFormat::Ndjson,
    };
    let mut request = args.filter.query()?.export_request(format);
    request.ids = args.ids.clone();
    let mut progress = Progress::new(args.quiet);
    let to_file = args.output.as_ref().filter(|path| path.as_os_str() != "-");
    let summary = match to_file {
        Some(path) => {
            let summary = client
                .export_request_to_path(path, request, |chunk| progress.chunk(chunk))
                .await?;
            if !args.quiet {
                progress.finish(&summary, &path.display().to_string());
            }
            summary
        }
        None => {
            let stdout = tokio::io::stdout();
            let summary = client
                .export_to_with(stdout, request, |chunk| progress.chunk(chunk))
                .await?;
            if !args.quiet {
                progress.finish(&summary, "stdout");
            }
            summary
        }
    };
    let _ = std::io::stderr().flush();
    let _ = summary;
    Ok(())
}
