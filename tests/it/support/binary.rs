//! `attrelay serve` run as an operator runs it: the built binary, started
//! and awaited until it says where it listens, its stdout and its log
//! (stderr) read as they come, so that neither pipe can fill and stall it,
//! and kept for the test to look at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How to start `attrelay serve`.
#[derive(Default)]
pub struct Launch {
    config: Option<PathBuf>,
    dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    open_files: Option<u64>,
}

/// Lines a pipe gave so far, kept up to date by a task that reads it.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn read_from(pipe: impl AsyncRead + Unpin + Send + 'static) -> Lines {
        let lines = Lines::default();
        let kept = lines.clone();
        let mut reader = BufReader::new(pipe).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                kept.0.lock().unwrap().push(line);
            }
        });
        lines
    }

    fn snapshot(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Every line so far once one of them is `done`, waiting up to
    /// `within`; panics with what came otherwise.
    async fn wait_for(&self, within: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let lines = self.snapshot();
            if lines.iter().any(|l| done(l)) {
                return lines;
            }
            if tokio::time::Instant::now() >= until {
                panic!("the awaited line did not come within {within:?}: {lines:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A running `attrelay serve`, killed when dropped.
pub struct Served {
    pub child: Child,
    /// Where its SMTP server listens.
    pub addr: SocketAddr,
    stdout: Lines,
    log: Lines,
}

impl Launch {
    /// `attrelay serve` (with `--config config` when given) at
    /// `RUST_LOG=attrelay=info`.
    pub fn new(config: Option<&Path>) -> Launch {
        Launch {
            config: config.map(Path::to_path_buf),
            ..Launch::default()
        }
    }

    /// Runs in `dir` (the demo writes `attrelay-data/` where it runs).
    pub fn in_dir(mut self, dir: &Path) -> Launch {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// With `name` set to `value` in its environment.
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Under an open-file limit of `files` (`ulimit -n`, through a shell).
    pub fn open_files(mut self, files: u64) -> Launch {
        self.open_files = Some(files);
        self
    }

    fn command(&self) -> Command {
        let binary = env!("CARGO_BIN_EXE_attrelay");
        let mut command = match self.open_files {
            Some(files) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
                    .arg(binary);
                sh
            }
            None => Command::new(binary),
        };
        command.arg("serve");
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command.env("RUST_LOG", "attrelay=info");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Starts it and waits (60 s at most) until it says where it listens.
    pub async fn start(self) -> Served {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = Lines::read_from(child.stdout.take().unwrap());
        let log = Lines::read_from(child.stderr.take().unwrap());
        let listening = "attrelay: listening on ";
        let said = stdout
            .wait_for(Duration::from_secs(60), |l| l.starts_with(listening))
            .await;
        let addr = said
            .iter()
            .find_map(|l| l.strip_prefix(listening))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .expect("an address where it listens");
        Served {
            child,
            addr,
            stdout,
            log,
        }
    }
}

/// Starts `attrelay serve` (with `--config config` when given) in `dir`.
pub async fn serve(config: Option<&Path>, dir: &Path) -> Served {
    Launch::new(config).in_dir(dir).start().await
}

impl Served {
    /// The log's lines once one `done` accepts (30 s at most): all of them.
    pub async fn log_until(&self, done: impl Fn(&str) -> bool) -> Vec<String> {
        self.log.wait_for(Duration::from_secs(30), done).await
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.snapshot().join("\n")
    }

    /// Where its admin endpoint listens, as it said (30 s at most).
    pub async fn admin(&self) -> SocketAddr {
        let prefix = "attrelay: admin endpoint on http://";
        let said = self
            .stdout
            .wait_for(Duration::from_secs(30), |l| l.starts_with(prefix))
            .await;
        said.iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .expect("an admin address")
    }

    /// Sends it `signal` (`HUP`, `TERM`...) as `kill -SIGNAL PID` does.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}
