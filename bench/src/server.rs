//! A real `reqlog serve` process, driven over gRPC.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqlog_client::ReqlogClient;

/// A running server process.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
    /// A connected client.
    pub(crate) client: ReqlogClient,
}

/// The `reqlog` binary beside this one, built first when missing.
pub(crate) fn reqlog_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let dir = exe.parent().ok_or("the bench binary has no directory")?;
    let binary = dir.join("reqlog");
    if !binary.exists() {
        let release = dir.ends_with("release");
        eprintln!(
            "building reqlog ({})",
            if release { "release" } else { "debug" }
        );
        let mut cargo = Command::new("cargo");
        cargo.args(["build", "-p", "reqlog-service", "--bin", "reqlog"]);
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().map_err(|e| format!("cargo: {e}"))?;
        if !status.success() || !binary.exists() {
            return Err("could not build reqlog".into());
        }
    }
    Ok(binary)
}

fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(listener
        .local_addr()
        .map_err(|e| format!("addr: {e}"))?
        .port())
}

impl ServerProcess {
    /// Starts `reqlog serve` on a free loopback port over `database_url` and waits until it
    /// answers. The background sweep is off unless `extra` turns it on.
    pub(crate) async fn start(
        binary: &Path,
        database_url: &str,
        log: &Path,
        extra: &[&str],
    ) -> Result<Self, String> {
        let port = free_port()?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(binary)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                database_url,
            ])
            .args(["--sweep-interval", "0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn reqlog: {e}"))?;
        let url = format!("http://127.0.0.1:{port}");
        let mut last = String::new();
        for _ in 0..600 {
            match ReqlogClient::connect(url.clone()).await {
                Ok(client) => return Ok(Self { child, url, client }),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "reqlog did not start: {last} (see {})",
            log.display()
        ))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
    pub(crate) fn memory_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with(field))
                    .and_then(|line| {
                        line.split_whitespace()
                            .nth(1)
                            .and_then(|kib| kib.parse().ok())
                    })
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then waits for a clean exit.
    pub(crate) fn stop(mut self) -> Result<(), String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("reqlog exited with {status}"))
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        Err("reqlog did not stop within 30 s".into())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
