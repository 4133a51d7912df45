//! The `reqlog` binary.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use reqlog_service::auth::file::token_sha256;
use reqlog_service::config::{Cli, Command};
use reqlog_service::{Application, cli, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            telemetry::init(config.log_format);
            tracing::info!(config = ?config, "starting");
            let result = match Application::build(&config).await {
                Ok(app) => {
                    tracing::info!(address = %app.local_addr(), "listening");
                    app.run_until_stopped(shutdown_signal()).await
                }
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    let error = with_causes(&error);
                    tracing::error!(%error, "reqlog stopped");
                    eprintln!("reqlog: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashToken => hash_token(),
        // Every other subcommand is an operator command over the SDK.
        command => cli::run(command).await,
    }
}

/// The error and each cause its message does not already include: "database: database
/// error" alone does not say that a migration failed, or why.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = next.source();
    }
    message
}

/// `reqlog hash-token`: the token comes on stdin (never as an argument, which `ps` and
/// shell history would show); one trailing newline is dropped so `echo $TOKEN |` works.
fn hash_token() -> ExitCode {
    let mut token = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut token) {
        eprintln!("reqlog: cannot read the token from stdin: {error}");
        return ExitCode::FAILURE;
    }
    let token = token
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&token);
    if token.is_empty() {
        eprintln!("reqlog: no token on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", token_sha256(token));
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}
