//! What `serve` needs of a configuration before it listens, checked
//! without binding a port or writing a file: the server's certificate and
//! key (and that they match), the client-certificate CA files, the
//! delivery client's certificate, key and CA files, the policies and
//! tenant policies, and the directories the relay will write to.
//!
//! The policies are checked by building the evaluation (`reload::build`),
//! which a reload does anyway; this module checks the rest. `attrelay
//! config test` reports every problem; a reload refuses a configuration
//! with any, restart-only settings included, so that a reload never
//! accepts a file the next start would refuse.

use std::path::Path;

use crate::config::Config;
use crate::pem::read_certificates;
use crate::tls::server as tls_server;

/// The problems with the files `config` names that a reload does not read
/// otherwise: the certificates, keys and CA files, and the directories.
/// Each names the configuration's file, line and key, then the file and
/// what is wrong with it.
pub fn files(config: &Config) -> Vec<String> {
    let mut found = checked(config);
    // A relay that gave up root reads its keys at start, as root: at a
    // reload it cannot read a key only root may read, and need not (they
    // are restart-only); its next start reads them again.
    if config.server.run_as.is_some() && !crate::privileges::is_root() {
        found.retain(|p| {
            let key_file = p.contains(": server.tls_") || p.contains(": delivery.tls_");
            !(key_file && p.contains(ROOT_ONLY))
        });
    }
    found
}

/// What a file only root may read says (`Permission denied`, the OS's
/// own words).
const ROOT_ONLY: &str = "Permission denied";

fn checked(config: &Config) -> Vec<String> {
    let at = |key: &str| config.file_keys.at(key);
    let mut found: Vec<String> = Vec::new();
    let s = &config.server;
    for (i, ca) in s.client_ca.iter().enumerate() {
        if let Err(e) = read_certificates(ca) {
            found.push(format!("{}: {e}", at(&format!("server.client_ca[{i}]"))));
        }
    }
    if let (Some(cert), Some(key)) = (&s.tls_cert, &s.tls_key) {
        let certs = read_certificates(cert)
            .map_err(|e| found.push(format!("{}: {e}", at("server.tls_cert"))));
        let key = tls_server::read_private_key(key)
            .map_err(|e| found.push(format!("{}: {e}", at("server.tls_key"))));
        if let (Ok(certs), Ok(key)) = (certs, key)
            && let Err(e) = tls_server::server_config(certs, key, &s.client_ca)
        {
            found.push(format!("{} / tls_key: {e}", at("server.tls_cert")));
        }
    }
    found.extend(delivery_files(config));
    found.extend(writable_dir(&config.spool, &at("spool.path")));
    if let Some(cache) = &config.policy.cache {
        found.extend(writable_dir(cache, &at("policy.cache")));
    }
    if let Some(log) = &config.policy.decision_log {
        found.extend(writable_file(log, &at("policy.decision_log")));
    }
    found
}

/// `[delivery] tls_cert`, `tls_key` and `tls_ca`, each read, then together.
fn delivery_files(config: &Config) -> Vec<String> {
    let at = |key: &str| config.file_keys.at(key);
    let d = &config.delivery;
    let mut found = Vec::new();
    if let Some(Err(e)) = d.tls_cert.as_deref().map(read_certificates) {
        found.push(format!("{}: {e}", at("delivery.tls_cert")));
    }
    if let Some(Err(e)) = d.tls_key.as_deref().map(tls_server::read_private_key) {
        found.push(format!("{}: {e}", at("delivery.tls_key")));
    }
    for (i, ca) in d.tls_ca.iter().enumerate() {
        if let Err(e) = read_certificates(ca) {
            found.push(format!("{}: {e}", at(&format!("delivery.tls_ca[{i}]"))));
        }
    }
    if !found.is_empty() {
        return found;
    }
    let client_cert = match (&d.tls_cert, &d.tls_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    if let Err(e) = crate::tls::client_config(&d.tls_ca, client_cert) {
        found.push(format!(
            "{} / tls_key / tls_ca: {e}",
            at("delivery.tls_cert")
        ));
    }
    found
}

/// A directory the relay will create or write in: it is one (and may be
/// read), or the nearest part of its path that exists is a directory the
/// relay may write in.
fn writable_dir(dir: &Path, key: &str) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Some(format!("{key}: {} is not a directory", dir.display())),
        Ok(_) => std::fs::read_dir(dir)
            .err()
            .map(|e| format!("{key}: {}: {e}", dir.display())),
        Err(_) => {
            let parent = dir.ancestors().skip(1).find(|a| a.exists())?;
            let writable = rustix::fs::access(parent, rustix::fs::Access::WRITE_OK).is_ok();
            (!writable || !parent.is_dir()).then(|| {
                format!(
                    "{key}: {} cannot be created: {} is not a directory this user may write in",
                    dir.display(),
                    parent.display()
                )
            })
        }
    }
}

/// A file the relay will append to: a writable file, or one it may create.
fn writable_file(file: &Path, key: &str) -> Option<String> {
    match std::fs::metadata(file) {
        Ok(_) => rustix::fs::access(file, rustix::fs::Access::WRITE_OK)
            .err()
            .map(|e| format!("{key}: {}: cannot write: {e}", file.display())),
        Err(_) => {
            let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
            writable_dir(dir.unwrap_or(Path::new(".")), key)
        }
    }
}
