//! The one way a test configures a relay: the wire fixture (the seed
//! tenants with their IP ranges moved into loopback) as a TOML document,
//! changed through typed settings — a key set, a section merged, a tenant
//! or connector changed by name — never by replacing text. A change aimed
//! at something the document does not have (a tenant, a connector, a key
//! to remove) fails the test: a stale setting is a test that no longer
//! tests what it says. (Tests of the configuration's own errors write
//! their text by hand: there the text, its lines and keys, is the subject.)
//!
//! [`Setup::start`] runs the relay in-process; [`Setup::write`] gives the
//! file to tests that run the binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use attrelay::config::Config;
use attrelay::relay::{self, RelayHandle};
use toml::{Table, Value};

use super::Pki;
use super::smtp::Sink;
use super::wire::Relay;

/// A relay's configuration in the making, with the PKI (and directory)
/// its files live in.
pub struct Setup {
    /// The PKI, when the setup made it (a test that made its own keeps it).
    pki: Option<Pki>,
    /// Where the PKI's files, the configuration and the spool are.
    dir: PathBuf,
    /// The configuration's file name in `dir` (`relay.toml`).
    file: String,
    doc: Table,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

impl Setup {
    /// The wire fixture: listening on a free loopback port, client
    /// certificates checked against the PKI's CA, the spool and the admin
    /// endpoint (on a free port) private to this test, no `[delivery]`.
    pub fn new() -> Setup {
        let pki = Pki::new();
        let mut setup = Setup::for_pki(&pki);
        setup.pki = Some(pki);
        setup
    }

    /// [`Setup::new`] in the directory of a PKI the test made (and keeps
    /// alive) itself, for files it writes there first.
    pub fn for_pki(pki: &Pki) -> Setup {
        let text = super::wire::wire_toml(pki, "", "");
        let doc = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("the wire fixture parses: {e}\n{text}"));
        Setup {
            pki: None,
            dir: pki.path(""),
            file: "relay.toml".into(),
            doc,
        }
    }

    /// The seed fixture as the reference writes it (IP ranges not moved,
    /// no `client_ca`): for tests that state a client's address as a fact
    /// (the policy service's requests) rather than connect from it.
    /// Listening on a free loopback port, its spool in the PKI's directory.
    pub fn seed() -> Setup {
        let pki = Pki::new();
        let spool = pki.path("spool").display().to_string();
        let text = super::fixture_toml(&format!(
            "listen = [\"127.0.0.1:0\"]\n\n[spool]\npath = {spool:?}\n"
        ));
        let doc = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("the seed fixture parses: {e}\n{text}"));
        Setup {
            dir: pki.path(""),
            pki: Some(pki),
            file: "relay.toml".into(),
            doc,
        }
    }

    /// The configuration a running test relay was started on (`path`), to
    /// change and write back for a reload.
    pub fn read(path: &std::path::Path) -> Setup {
        let text = std::fs::read_to_string(path).unwrap();
        let doc = text
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Setup {
            pki: None,
            dir: path.parent().expect("a file in a directory").to_path_buf(),
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            doc,
        }
    }

    /// Sets `key` (dotted: `server.max_sessions`, `delivery.next_hop`),
    /// creating the tables on the way.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Setup {
        let (table, last) = table_at(&mut self.doc, key);
        table.insert(last.to_string(), value.into());
        self
    }

    /// Merges `fragment` (TOML: keys and whole sections) into the
    /// document: its tables merge key by key, anything else replaces what
    /// was there; `[[tenant]]` entries are added as new tenants.
    pub fn merge(mut self, fragment: &str) -> Setup {
        let parsed = fragment
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("a test's TOML fragment parses: {e}\n{fragment}"));
        merge(&mut self.doc, parsed);
        self
    }

    /// Changes tenant `id`, which must exist.
    pub fn tenant(mut self, id: &str, change: impl FnOnce(&mut Table)) -> Setup {
        change(tenant(&mut self.doc, id));
        self
    }

    /// Merges `fragment` (TOML keys) into tenant `id`, which must exist.
    pub fn merge_tenant(self, id: &str, fragment: &str) -> Setup {
        let parsed = fragment
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("a test's TOML fragment parses: {e}\n{fragment}"));
        self.tenant(id, |t| merge(t, parsed))
    }

    /// Changes connector `name` of tenant `id`; both must exist.
    pub fn connector(mut self, id: &str, name: &str, change: impl FnOnce(&mut Table)) -> Setup {
        let connectors = tenant(&mut self.doc, id)
            .get_mut("connector")
            .and_then(Value::as_array_mut)
            .unwrap_or_else(|| panic!("tenant {id} has no connectors"));
        let connector = connectors
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("tenant {id} has no connector {name}"));
        change(connector);
        self
    }

    /// Delivers to `addr`, retrying after 1 s and at most every 2 s.
    pub fn deliver_to(self, addr: SocketAddr) -> Setup {
        self.set("delivery.next_hop", addr.to_string())
            .set("delivery.retry_initial_secs", 1)
            .set("delivery.retry_max_secs", 2)
    }

    /// Writes `contents` to `name` in the PKI's directory, beside the
    /// configuration (relative paths in it are resolved there).
    pub fn file(self, name: &str, contents: impl AsRef<[u8]>) -> Setup {
        std::fs::write(self.path(name), contents).unwrap();
        self
    }

    /// Whether `key` (dotted) is set.
    pub fn has(&self, key: &str) -> bool {
        let mut value = None;
        let mut table = Some(&self.doc);
        for part in key.split('.') {
            value = table.and_then(|t| t.get(part));
            table = value.and_then(Value::as_table);
        }
        value.is_some()
    }

    /// A path in the PKI's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The configuration as the relay reads it.
    pub fn toml(&self) -> String {
        toml::to_string(&self.doc).expect("a TOML table serialises")
    }

    /// Writes the configuration to `relay.toml` in the PKI's directory (or
    /// back to the file [`Setup::read`] read).
    pub fn write(&self) -> PathBuf {
        let path = self.path(&self.file);
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    /// The configuration, written and loaded (relative paths resolved).
    pub fn config(&self) -> Config {
        let path = self.write();
        Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{}", self.toml()))
    }

    /// Starts the relay in-process; the setup (and the files it names)
    /// stays with the caller.
    pub async fn launch(&self) -> RelayHandle {
        relay::start(&self.config()).await.unwrap()
    }

    /// Starts the relay in-process and returns its handle and the PKI
    /// (made by [`Setup::new`] or [`Setup::seed`]).
    pub async fn start_handle(self) -> (RelayHandle, Pki) {
        let handle = self.launch().await;
        (handle, self.into_pki())
    }

    /// The PKI this setup made.
    pub fn into_pki(self) -> Pki {
        self.pki
            .expect("the setup made its PKI (Setup::for_pki leaves it with the test)")
    }

    /// Starts the relay in-process. Without a `delivery.next_hop` or
    /// `delivery.directory`, it delivers to a fresh sink (the relay's
    /// `sink`), retrying after 1 s and at most every 2 s unless
    /// `[delivery]` says otherwise.
    pub async fn start(self) -> Relay {
        let sink = Sink::start().await;
        let setup = if self.has("delivery.next_hop") || self.has("delivery.directory") {
            self
        } else {
            let mut s = self.set("delivery.next_hop", sink.addr.to_string());
            for (key, secs) in [
                ("delivery.retry_initial_secs", 1),
                ("delivery.retry_max_secs", 2),
            ] {
                if !s.has(key) {
                    s = s.set(key, secs);
                }
            }
            s
        };
        let (handle, pki) = setup.start_handle().await;
        let addr = handle.addrs[0];
        Relay {
            handle,
            addr,
            pki,
            sink,
        }
    }
}

/// The table that holds the last segment of dotted `key`, and that segment.
fn table_at<'a, 'k>(doc: &'a mut Table, key: &'k str) -> (&'a mut Table, &'k str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key");
    let mut table = doc;
    for part in parts {
        table = table
            .entry(part)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{part} in {key} is not a table"));
    }
    (table, last)
}

fn tenant<'a>(doc: &'a mut Table, id: &str) -> &'a mut Table {
    doc.get_mut("tenant")
        .and_then(Value::as_array_mut)
        .and_then(|tenants| {
            tenants
                .iter_mut()
                .filter_map(Value::as_table_mut)
                .find(|t| t.get("id").and_then(Value::as_str) == Some(id))
        })
        .unwrap_or_else(|| panic!("no tenant {id} in the configuration"))
}

fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(old)), Value::Table(new)) => merge(old, new),
            (Some(Value::Array(old)), Value::Array(new)) if key == "tenant" => old.extend(new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}
