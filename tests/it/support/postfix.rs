//! A private Postfix instance for interop tests and the load benchmark: its
//! own configuration, queue and ports in a directory, started with
//! `postfix -c DIR start` (as root, as a Postfix master must be) and stopped
//! when dropped. The caller adds its role's main.cf lines.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `postfix` command: Debian puts it in /usr/sbin, which a non-login
/// PATH may lack.
pub fn postfix_binary() -> String {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/sbin"] {
        let p = format!("{dir}/postfix");
        if Path::new(&p).exists() {
            return p;
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v postfix"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    found.unwrap_or_else(|| {
        panic!("Postfix is not installed: this interop test needs it (.ci/run installs Debian's postfix package)")
    })
}

/// One Postfix instance at a time in this process.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private Postfix instance, stopped when dropped.
pub struct Postfix {
    pub dir: PathBuf,
    pub addr: SocketAddr,
}

impl Postfix {
    fn postfix(&self, args: &[&str]) -> std::process::Output {
        Command::new(postfix_binary())
            .arg("-c")
            .arg(self.dir.join("etc"))
            .args(args)
            .output()
            .expect("running postfix")
    }

    /// Postfix's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Starts an instance relaying to `next_hop`, with `extra` lines
    /// appended to its main.cf (the role-specific settings).
    pub fn start(dir: &Path, next_hop: SocketAddr, extra: &str) -> Postfix {
        let _ = postfix_binary();
        // Postfix's master must start as root.
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "starting a Postfix instance needs root"
        );
        for d in ["etc", "queue", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // Postfix's daemons run as the postfix user: they must reach the
        // queue below the temporary directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let port = free_port();
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
relayhost = [{next_ip}]:{next_port}
smtp_tls_security_level = none
{extra}
",
            next_ip = next_hop.ip(),
            next_port = next_hop.port(),
        );
        std::fs::write(dir.join("etc/main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{port} inet n - n - - smtpd
{}",
            include_str!("postfix-services.cf")
        );
        std::fs::write(dir.join("etc/master.cf"), master_cf).unwrap();
        let pf = Postfix {
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let out = pf.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(pf.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "Postfix did not listen on {}:\n{}",
                pf.addr,
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pf
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix(&["stop"]);
    }
}
