//! Runner: Haraka 3.3.4 from the npm registry with the plugin
//! (`gateways/haraka`), over SMTP on loopback: STARTTLS with the kit's
//! client certificates, mail forwarded on to a sink (`queue/smtp_forward`).
//! Codes come from Haraka's replies; tenant, reason and warning from the
//! plugin's `attrelay verdict` log lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attrelay_policy::scenarios::{KIT_JSON, KitScenario};
use tempfile::TempDir;

use super::node::{dist, plugin_dir};
use super::smtp::{
    Group, combine, free_port, loopback_clients, send, server_certificate, verdict_lines,
    wall_clock_groups,
};
use super::{Host, Observed, SESSION_TIME, anchor_pem, assert_passes};

/// A private Haraka: its own directory, configuration and port.
pub struct Haraka {
    pub dir: TempDir,
    pub port: u16,
    child: Child,
}

impl Haraka {
    /// Starts Haraka with the plugin configured by `attrelay_ini` (its
    /// `[main]` keys beyond `dist`, and `[settings]`), forwarding accepted
    /// mail to `forward`. Waits (60 s at most) for its greeting.
    pub fn start(attrelay_ini: &str, files: &[(&str, &str)], forward: SocketAddr) -> Haraka {
        Haraka::start_with(dist(), attrelay_ini, files, forward)
    }

    /// [`Haraka::start`] with the component transpiled in `dist`.
    pub fn start_with(
        dist: &Path,
        attrelay_ini: &str,
        files: &[(&str, &str)],
        forward: SocketAddr,
    ) -> Haraka {
        let dir = tempfile::tempdir().unwrap();
        let haraka = plugin_dir().join("node_modules/.bin/haraka");
        let out = Command::new(&haraka)
            .arg("-i")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "haraka -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = dir.path().join("config");
        let port = free_port();
        let write = |name: &str, text: &str| std::fs::write(config.join(name), text).unwrap();
        write("smtp.ini", &format!("listen=[::0]:{port}\nnodes=0\n"));
        write("plugins", "tls\nattrelay\nqueue/smtp_forward\n");
        write("me", "relay.example.test\n");
        write("log.ini", "[main]\nlevel=info\n");
        write(
            "smtp_forward.ini",
            &format!(
                "host={}\nport={}\nenable_tls=false\n",
                forward.ip(),
                forward.port()
            ),
        );
        write(
            "attrelay.ini",
            &format!("[main]\ndist={}\n{attrelay_ini}", dist.display()),
        );
        for (name, text) in files {
            write(name, text);
        }
        server_certificate(&config);
        // A prepared DH group: Haraka would otherwise generate one at start.
        std::fs::write(config.join("dhparams.pem"), include_str!("ffdhe2048.pem")).unwrap();
        std::fs::write(config.join("tls.ini"), "dhparam=dhparams.pem\n").unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules")).unwrap();
        std::os::unix::fs::symlink(
            plugin_dir(),
            dir.path().join("node_modules/haraka-plugin-attrelay"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("haraka.log")).unwrap();
        let child = Command::new(&haraka)
            .arg("-c")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut h = Haraka { dir, port, child };
        h.wait_for_greeting();
        h
    }

    fn wait_for_greeting(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("haraka exited ({status}):\n{}", self.log());
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::Read;
                let mut buf = [0u8; 3];
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                if s.read_exact(&mut buf).is_ok() && &buf == b"220" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("haraka did not greet within 60 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haraka.log")).unwrap_or_default()
    }

    /// The log once `done` holds for it (10 s at most): Haraka writes it
    /// as it goes.
    pub fn log_until(&self, done: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if done(&log) || started.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Haraka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kit's tenants (JSON, the relay's keys) and the plugin's settings.
pub fn kit_attrelay_ini(settings: &BTreeMap<String, String>) -> String {
    let mut ini = format!(
        "directory=tenants.json\nclient_ca={}\n[settings]\n",
        anchor_pem().display()
    );
    for (k, v) in settings {
        writeln!(ini, "{k}={v}").unwrap();
    }
    ini
}

pub fn kit_tenants_json() -> String {
    let doc: serde_json::Value = serde_json::from_str(KIT_JSON).unwrap();
    doc["directory"].to_string()
}

/// Every wall-clock group through its own Haraka; answers by scenario.
struct HarakaHost {
    answers: HashMap<String, (Observed, Vec<Observed>)>,
}

impl HarakaHost {
    fn run_all() -> HarakaHost {
        loopback_clients();
        let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut answers = HashMap::new();
        for Group {
            settings,
            scenarios,
        } in wall_clock_groups()
        {
            let tenants = kit_tenants_json();
            let haraka = Haraka::start(
                &kit_attrelay_ini(&settings),
                &[("tenants.json", &tenants)],
                nowhere,
            );
            let replies = send(haraka.port, &scenarios);
            let expected_lines: usize = scenarios.iter().map(|s| 1 + s.recipients.len()).sum();
            let log =
                haraka.log_until(|l| l.matches("attrelay verdict ").count() >= expected_lines);
            answers.extend(combine(&scenarios, &replies, &verdict_lines(&log)));
        }
        HarakaHost { answers }
    }
}

impl Host for HarakaHost {
    fn lacks(&self) -> &'static [&'static str] {
        &[SESSION_TIME]
    }

    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        self.answers[&s.name].clone()
    }
}

#[test]
fn haraka_with_the_plugin_passes_the_kit() {
    assert_passes(&mut HarakaHost::run_all());
}
