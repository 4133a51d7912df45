//! Things outside the test process: `reqlog serve` as a child process, and a private
//! PostgreSQL cluster that a test may stop and start without touching the shared server.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The `reqlog` binary of this workspace, built on first use.
///
/// The tests crate does not get `CARGO_BIN_EXE_reqlog` (that is only for the binary's own
/// crate), so it asks cargo to build it (a no-op when `cargo test --workspace` already did)
/// and takes the path cargo reports. That path honours `CARGO_TARGET_DIR` and the profile.
pub fn reqlog_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_reqlog).clone()
}

fn build_reqlog() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate should sit inside the workspace")
        .join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["-p", "reqlog-service", "--bin", "reqlog", "--manifest-path"])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let output = command.output().expect("cargo should run");
    assert!(
        output.status.success(),
        "building the reqlog binary failed ({})",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executable = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "reqlog")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("cargo should report the reqlog executable");
    assert!(executable.is_file(), "{} is missing", executable.display());
    executable
}

/// A free loopback port (bound and released; another process may take it in between, so
/// use it for servers that do not offer port 0, such as a PostgreSQL cluster).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a loopback port should be free")
}

/// One line a server printed on stderr, parsed when it is JSON.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line as printed.
    pub text: String,
    /// The JSON object (`--log-format json`), or `Null`.
    pub json: serde_json::Value,
}

impl LogLine {
    /// The event's message.
    pub fn message(&self) -> Option<&str> {
        self.json["fields"]["message"].as_str()
    }

    /// A field of the event, as JSON.
    pub fn field(&self, name: &str) -> &serde_json::Value {
        &self.json["fields"][name]
    }

    /// When the server logged the event, in microseconds since the epoch (from the JSON
    /// `timestamp`, RFC 3339 in UTC as tracing writes it).
    pub fn timestamp_micros(&self) -> Option<i64> {
        parse_rfc3339_utc(self.json["timestamp"].as_str()?)
    }
}

/// `2026-11-22T05:07:12.123456Z` → microseconds since the epoch.
fn parse_rfc3339_utc(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        clock.next()?.ok()?,
        clock.next()?.ok()?,
        clock.next()?.ok()?,
    );
    let micros: i64 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3_600 + minute * 60 + second) * 1_000_000) + micros)
}

/// A `reqlog serve` child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    /// A name for messages, e.g. `replica-a`.
    pub name: String,
    /// The address the server reported in its `listening` line.
    pub addr: SocketAddr,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<LogLine>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `reqlog serve ARGS` with JSON logs on stderr and waits (up to `timeout`) for
    /// its `listening` line, which carries the port it bound (pass `--listen 127.0.0.1:0`).
    pub fn start(name: &str, args: &[&str], timeout: Duration) -> Self {
        Self::start_logging(name, args, "info,sqlx=warn,sea_orm=warn", timeout)
    }

    /// As `start`, with `RUST_LOG` set to `rust_log` (e.g. `trace`); stdout is captured too.
    pub fn start_logging(name: &str, args: &[&str], rust_log: &str, timeout: Duration) -> Self {
        let binary = reqlog_binary();
        let mut child = Command::new(&binary)
            .arg("serve")
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the reqlog binary should start");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let out_pipe = child.stdout.take().expect("stdout is piped");
        let out_sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for text in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                out_sink
                    .lock()
                    .expect("the stdout sink is never poisoned")
                    .push(text);
            }
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let echo = std::env::var_os("TEST_LOG").is_some();
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[{prefix}] {text}");
                }
                let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                sink.lock()
                    .expect("the log sink is never poisoned")
                    .push(LogLine { text, json });
            }
        });
        let mut server = Self {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            lines,
            stdout,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let listening = server
                .lines()
                .into_iter()
                .filter(|line| line.message() == Some("listening"))
                .find_map(|line| line.field("address").as_str()?.parse().ok());
            if let Some(addr) = listening {
                server.addr = addr;
                return server;
            }
            if let Some(status) = server.try_exit_status() {
                panic!(
                    "{name} exited before listening ({status}):\n{}",
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen within {timeout:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The endpoint URL for a client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lines
            .lock()
            .expect("the log sink is never poisoned")
            .clone()
    }

    /// Lines printed so far whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<LogLine> {
        self.lines()
            .into_iter()
            .filter(|line| line.message() == Some(message))
            .collect()
    }

    /// Everything printed so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.lines()
            .into_iter()
            .map(|line| line.text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Everything printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        self.stdout
            .lock()
            .expect("the stdout sink is never poisoned")
            .join("\n")
    }

    /// Sends SIGHUP (the server re-reads its auth file).
    pub fn hangup(&self) {
        let Some(child) = &self.child else {
            return;
        };
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .expect("kill should run");
        assert!(status.success(), "SIGHUP should be delivered");
    }

    /// Waits up to `timeout` until `count` lines with message `message` have been printed,
    /// and returns them; panics with the log otherwise.
    pub fn wait_for_events(&self, message: &str, count: usize, timeout: Duration) -> Vec<LogLine> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events(message);
            if events.len() >= count {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {count} `{message}` within {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) without waiting.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server should still be running");
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill should run");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; SIGKILL after that. Returns the
    /// exit status (`None` when it had to be killed).
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?}: killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// A process's resident set size in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A PostgreSQL cluster of the test's own (`initdb` in a temporary directory, listening on
/// 127.0.0.1 and a free port, trust authentication), so that a test can stop and start a
/// database server while the shared one keeps serving the other tests. Stopped when dropped.
#[derive(Debug)]
pub struct PgCluster {
    /// The port it listens on.
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    /// Run the PostgreSQL tools as this OS user (`runuser`): initdb refuses to run as root.
    run_as: Option<String>,
}

impl PgCluster {
    /// The directory of `initdb` and `pg_ctl`: `PG_BIN` if set, else the newest
    /// `/usr/lib/postgresql/*/bin`, else whatever `PATH` has.
    pub fn find_bin() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
            return dir.join("initdb").is_file().then_some(dir);
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    }

    /// Creates and starts a cluster (waits until it accepts connections).
    pub fn start_new(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory should be creatable");
        let we_are_root = std::fs::metadata(dir.path())
            .map(|meta| meta.uid() == 0)
            .unwrap_or(false);
        let run_as = we_are_root.then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args([&format!("{user}:"), &dir.path().display().to_string()])
                .status()
                .expect("chown should run");
            assert!(
                status.success(),
                "the cluster directory should be given to {user}"
            );
        }
        let cluster = Self {
            port: free_port(),
            bin,
            dir,
            run_as,
        };
        let data = cluster.data_dir();
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let settings = format!(
            "\n# reqlog test cluster\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_connections = 50\nshared_buffers = 32MB\n\
             fsync = on\nsynchronous_commit = on\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let conf = cluster.dir.path().join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("initdb should write postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("postgresql.conf should be writable");
        cluster.start();
        cluster
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_file(&self) -> String {
        self.dir.path().join("server.log").display().to_string()
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let (data, log) = (self.data_dir(), self.log_file());
        self.run_ok(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "30", "start"],
        );
    }

    /// Stops the server (`-m fast`: sessions are ended, what is committed stays) and waits.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run_ok(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"],
        );
    }

    /// The server's log, for failure messages.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("{tool} should run: {error}"))
    }

    fn run_ok(&self, tool: &str, args: &[&str]) {
        let output = self.run(tool, args);
        assert!(
            output.status.success(),
            "{tool} {args:?} failed ({}):\n{}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.server_log()
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing of a throw-away cluster needs saving, and a failed test must
        // not leave a postmaster behind. A cluster already stopped just says so.
        let data = self.data_dir();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_parse() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-11-22T05:07:12.123456Z"),
            Some(1_795_324_032_123_456)
        );
        assert_eq!(parse_rfc3339_utc("2026-11-22 05:07:12"), None);
    }
}
