//! Subprocesses: the one runner for every external program converge starts (helm, git, the image
//! engines, service managers, kubectl-ai, `kill`). Always an argv vector, never a shell; always a
//! timeout; output captured with a bounded tail. Knows nothing of what the programs mean: callers
//! turn its [`Error`] into their own.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::watch;

/// Lines of output kept as the tail (both streams, in arrival order).
pub const TAIL_LINES: usize = 40;

/// How much of each stream is captured unless [`Command::capture_limit`] says otherwise.
pub const CAPTURE_CAP: usize = 1 << 20;

/// Lines of stderr a [`Error::Failed`] message quotes.
const ERROR_LINES: usize = 20;

/// Why a program did not run to a successful end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (not installed, not executable).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The program alone.
        program: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("`{command}` gave no result within {} and was stopped", humantime::format_duration(*timeout))]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout it had.
        timeout: Duration,
    },
    /// Cancellation was requested (daemon shutdown); it was killed.
    #[error("`{command}` was stopped: shutdown was requested")]
    Cancelled {
        /// The command line.
        command: String,
    },
    /// Feeding its stdin or reading its output failed.
    #[error("talking to `{command}`")]
    Io {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("`{command}` failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr: String,
    },
}

impl Error {
    /// Whether the program is not installed (so callers can say how to install it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The command line the error is about.
    pub fn command(&self) -> &str {
        match self {
            Error::Spawn { command, .. }
            | Error::Timeout { command, .. }
            | Error::Cancelled { command }
            | Error::Io { command, .. }
            | Error::Failed { command, .. } => command,
        }
    }
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output (capped at the capture limit; empty when inherited).
    pub stdout: String,
    /// Its standard error (capped at the capture limit; empty when inherited).
    pub stderr: String,
    /// The last [`TAIL_LINES`] lines of both streams, in arrival order.
    pub tail: Vec<String>,
    /// Whether a stream outgrew the capture limit and was cut.
    pub truncated: bool,
}

impl Output {
    /// Whether it exited successfully.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Itself when it exited successfully, else [`Error::Failed`] quoting the end of stderr.
    pub fn check(self) -> Result<Self, Error> {
        if self.success() {
            return Ok(self);
        }
        Err(Error::Failed {
            stderr: last_lines(&self.stderr, ERROR_LINES),
            command: self.command,
            status: self.status,
        })
    }
}

/// A program to run: argv, environment, stdin, timeout and cancellation.
#[derive(Debug)]
#[must_use]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    cancel: Option<watch::Receiver<bool>>,
    log: Option<String>,
    inherit: bool,
    capture_limit: usize,
}

impl Command {
    /// `program`, to be stopped after `timeout`.
    pub fn new(program: impl AsRef<OsStr>, timeout: Duration) -> Self {
        Self {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout,
            cancel: None,
            log: None,
            inherit: false,
            capture_limit: CAPTURE_CAP,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets one environment variable (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Sets environment variables (the rest is inherited).
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.env.extend(
            vars.into_iter()
                .map(|(k, v)| (k.as_ref().to_os_string(), v.as_ref().to_os_string())),
        );
        self
    }

    /// Runs it in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Feeds `bytes` on stdin (otherwise stdin is empty).
    pub fn stdin(mut self, bytes: Vec<u8>) -> Self {
        self.stdin = Some(bytes);
        self
    }

    /// Kills it as soon as `cancel` holds `true`.
    pub fn cancel(mut self, cancel: watch::Receiver<bool>) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Streams every output line to the debug log under `label` (build output; never for
    /// programs whose output may hold Secret data, such as rendered manifests).
    pub fn log_lines(mut self, label: impl Into<String>) -> Self {
        self.log = Some(label.into());
        self
    }

    /// Lets stdout and stderr go to this process's own (a program the user reads directly);
    /// nothing is captured.
    pub fn inherit_output(mut self) -> Self {
        self.inherit = true;
        self
    }

    /// Captures up to `bytes` of each stream instead of [`CAPTURE_CAP`].
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        self
    }

    /// The command line, for messages: the program and its arguments, space-separated.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs it to the end; `Ok` whatever its exit status.
    pub async fn output(self) -> Result<Output, Error> {
        let command = self.display();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            // The child dies with its handle, so a timeout or cancellation (which drop the
            // future) never leaves it running.
            .kill_on_drop(true);
        if self.inherit {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        tracing::debug!(command = %command, "starting");
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command.clone(),
            program: Path::new(&self.program).display().to_string(),
            source,
        })?;

        let writer = match (self.stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
                // A program that fails early closes stdin; its exit status tells why, not this.
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let reader = Reader {
            tail: &tail,
            log: self.log.as_deref(),
            limit: self.capture_limit,
        };
        let out = child.stdout.take().map(boxed);
        let err = child.stderr.take().map(boxed);
        let work = async {
            let ((stdout, cut_out), (stderr, cut_err)) =
                tokio::try_join!(reader.read(out), reader.read(err))?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, stdout, stderr, cut_out || cut_err))
        };
        let mut cancel = self.cancel;
        let result = tokio::select! {
            biased;
            _ = cancelled(&mut cancel) => Err(Error::Cancelled { command: command.clone() }),
            r = tokio::time::timeout(self.timeout, work) => match r {
                Ok(r) => r.map_err(|source| Error::Io { command: command.clone(), source }),
                Err(_) => Err(Error::Timeout { command: command.clone(), timeout: self.timeout }),
            },
        };
        if let Some(w) = writer {
            w.abort();
        }
        let (status, stdout, stderr, truncated) = result?;
        let tail = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        Ok(Output {
            command,
            status,
            stdout,
            stderr,
            tail,
            truncated,
        })
    }

    /// Runs it to the end; [`Error::Failed`] unless it exits successfully.
    pub async fn run(self) -> Result<Output, Error> {
        self.output().await?.check()
    }

    /// [`Command::output`] for synchronous callers, on a thread of its own (so it works inside
    /// or outside a Tokio runtime).
    pub fn output_blocking(self) -> Result<Output, Error> {
        let command = self.display();
        let io = |source| Error::Io {
            command: command.clone(),
            source,
        };
        std::thread::scope(|s| {
            s.spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(io)?
                    .block_on(self.output())
            })
            .join()
            .unwrap_or_else(|_| Err(io(std::io::Error::other("the runner thread panicked"))))
        })
    }

    /// [`Command::run`] for synchronous callers.
    pub fn run_blocking(self) -> Result<Output, Error> {
        self.output_blocking()?.check()
    }
}

/// A signal [`signal`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `SIGUSR1`: the daemon's "reconcile now".
    Usr1,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Usr1 => "USR1",
        }
    }
}

/// Sends `signal` to process `pid`. Through `kill(1)`, since the crate forbids `unsafe` and has
/// no safe signal-sending dependency; bounded like every other program.
pub async fn signal(pid: u32, signal: Signal) -> Result<(), Error> {
    Command::new("kill", Duration::from_secs(5))
        .args(["-s", signal.name(), &pid.to_string()])
        .run()
        .await
        .map(drop)
}

/// Resolves when `cancel` holds `true`; never when there is none or its sender is gone.
async fn cancelled(cancel: &mut Option<watch::Receiver<bool>>) {
    if let Some(cancel) = cancel {
        loop {
            if *cancel.borrow_and_update() {
                return;
            }
            if cancel.changed().await.is_err() {
                break;
            }
        }
    }
    std::future::pending::<()>().await;
}

type Stream = Box<dyn AsyncRead + Unpin + Send>;

fn boxed(s: impl AsyncRead + Unpin + Send + 'static) -> Stream {
    Box::new(s)
}

/// Reads one stream: captures up to `limit` bytes, keeps the shared tail, logs lines if asked.
#[derive(Clone, Copy)]
struct Reader<'a> {
    tail: &'a Mutex<VecDeque<String>>,
    log: Option<&'a str>,
    limit: usize,
}

impl Reader<'_> {
    /// The captured text and whether it was cut; reads to the end either way, so the program
    /// never blocks on a full pipe.
    async fn read(self, stream: Option<Stream>) -> std::io::Result<(String, bool)> {
        let mut captured = Vec::new();
        let mut cut = false;
        let Some(stream) = stream else {
            return Ok((String::new(), cut));
        };
        let mut stream = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            if stream.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            let room = self.limit.saturating_sub(captured.len());
            cut |= line.len() > room;
            captured.extend_from_slice(&line[..line.len().min(room)]);
            // Bytes, not `lines()`: output that is not UTF-8 is kept (lossily), not an error.
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if let Some(label) = self.log {
                tracing::debug!(label, "{text}");
            }
            if let Ok(mut t) = self.tail.lock() {
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text.to_string());
            }
        }
        Ok((String::from_utf8_lossy(&captured).into_owned(), cut))
    }
}

/// The last `n` lines of `text`, trimmed.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        Command::new("sh", Duration::from_secs(10)).args(["-c", script])
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed() {
        let started = std::time::Instant::now();
        let result = Command::new("sleep", Duration::from_millis(200))
            .arg("5")
            .output()
            .await;
        assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_cancelled_run_kills_its_process_promptly() {
        let (tx, rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let run = Command::new("sleep", Duration::from_secs(60))
            .arg("30")
            .cancel(rx)
            .output();
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(true);
        };
        let (result, ()) = tokio::join!(run, cancel);
        assert!(matches!(result, Err(Error::Cancelled { .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_dropped_cancel_sender_never_cancels() {
        let (tx, rx) = watch::channel(false);
        drop(tx);
        let out = sh("echo ok").cancel(rx).run().await.expect("runs");
        assert_eq!(out.stdout, "ok\n");
    }

    #[tokio::test]
    async fn output_is_kept_as_the_last_forty_lines() {
        // stdout and stderr are read concurrently, so "last" is arrival order: the pause makes
        // the stderr line arrive after every stdout line, as a build's final error does.
        let out = sh("seq 1 100; sleep 0.3; echo err >&2")
            .output()
            .await
            .expect("runs");
        assert_eq!(out.tail.len(), TAIL_LINES);
        assert!(out.tail.contains(&"100".to_string()) && out.tail.contains(&"err".to_string()));
        assert!(!out.tail.contains(&"50".to_string()));
    }

    #[tokio::test]
    async fn a_failure_names_the_command_its_status_and_the_end_of_stderr() {
        let e = sh("seq 1 50 >&2; exit 3").run().await.expect_err("fails");
        let msg = e.to_string();
        assert!(
            msg.starts_with("`sh -c seq 1 50 >&2; exit 3` failed (exit status: 3): 31\n"),
            "{msg}"
        );
        assert!(msg.ends_with("\n50"), "{msg}");
    }

    #[tokio::test]
    async fn a_silent_failure_ends_at_its_status() {
        let e = sh("exit 4").run().await.expect_err("fails");
        assert!(e.to_string().ends_with("failed (exit status: 4)"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_program_is_told_apart() {
        let e = Command::new("/nonexistent/converge-test", Duration::from_secs(1))
            .output()
            .await
            .expect_err("cannot start");
        assert!(e.is_not_found(), "{e:?}");
    }

    #[tokio::test]
    async fn stdin_is_fed_and_output_beyond_the_limit_is_cut() {
        let out = Command::new("cat", Duration::from_secs(10))
            .stdin(b"abcdef\nxyz".to_vec())
            .capture_limit(4)
            .run()
            .await
            .expect("runs");
        assert_eq!(out.stdout, "abcd");
        assert!(out.truncated);
        assert_eq!(out.tail, ["abcdef", "xyz"]);
    }

    #[test]
    fn the_blocking_form_works_inside_a_runtime_too() {
        let out = sh("printf hi").run_blocking().expect("runs");
        assert_eq!(out.stdout, "hi");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let out = rt.block_on(async { sh("printf hi").run_blocking() });
        assert_eq!(out.expect("runs").stdout, "hi");
    }

    #[tokio::test]
    async fn a_signal_to_no_such_process_fails_naming_kill() {
        // A pid far above any pid_max in use.
        let e = signal(999_999_999, Signal::Usr1)
            .await
            .expect_err("no such process");
        assert!(e.command().starts_with("kill -s USR1"), "{e}");
    }
}
