//! Child processes for the SDK tests: run to completion with a timeout,
//! output captured in files.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Returns nanoseconds since the Unix epoch, for unique directory names.
pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// Exit status and output of a finished child process.
pub struct ProcessOutput {
    /// `None` when the process ran out of time and was killed.
    pub status: Option<ExitStatus>,
    pub timeout: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl ProcessOutput {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

impl fmt::Display for ProcessOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => writeln!(f, "{status}")?,
            None => writeln!(
                f,
                "timed out after {} s and was killed",
                self.timeout.as_secs()
            )?,
        }
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

/// Runs `command` with its output in files named from `log_prefix`, polling
/// for its exit without blocking the runtime, and kills it after `timeout`.
///
/// Files instead of pipes mean a chatty child can never fill a pipe and stall.
/// The `process` feature of tokio is not enabled in this crate, so the child
/// is a `std::process::Child` polled with `try_wait`.
pub async fn run_to_completion(
    mut command: Command,
    log_prefix: &Path,
    timeout: Duration,
) -> std::io::Result<ProcessOutput> {
    let stdout_path = log_prefix.with_extension("stdout");
    let stderr_path = log_prefix.with_extension("stderr");
    if let Some(dir) = log_prefix.parent() {
        std::fs::create_dir_all(dir)?;
    }
    command
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path)?)
        .stderr(File::create(&stderr_path)?);
    let mut child = command.spawn()?;
    let status = wait_with_timeout(&mut child, timeout).await?;
    Ok(ProcessOutput {
        status,
        timeout,
        stdout: read_lossy(&stdout_path),
        stderr: read_lossy(&stderr_path),
    })
}

async fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|error| format!("<cannot read {}: {error}>", path.display()))
}
