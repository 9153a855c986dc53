//! Shared test fixtures: a real PKI made with rcgen at test time, the seed
//! fixture tenants rendered as a configuration file, one policy engine per
//! test process, and the rogue component built from source.

pub mod binary;
pub mod dns;
pub mod http;
pub mod postfix;
pub mod relay;
pub mod smtp;
pub mod wire;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use attrelay::config::Config;
use attrelay::policy::{EngineLimits, PolicyEngine};
use attrelay_policy::model::ConnectorKind;
use attrelay_policy::scenarios::fixture;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Certificates written as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The issuing (intermediate) CA, for tests that make their own leaves.
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A CA certificate's parameters (2010 to 2045), unconstrained.
pub fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "attrelay tests");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = date_time_ymd(2010, 1, 1);
    p.not_after = date_time_ymd(2045, 1, 1);
    p
}

pub fn leaf_params(
    cn: &str,
    sans: &[&str],
    from: (i32, u8, u8),
    to: (i32, u8, u8),
) -> CertificateParams {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = date_time_ymd(from.0, from.1, from.2);
    p.not_after = date_time_ymd(to.0, to.1, to.2);
    p
}

/// A year, month and day.
pub type Ymd = (i32, u8, u8);
/// Validity: from, to.
pub type Validity = (Ymd, Ymd);

pub const LONG: Validity = ((2015, 1, 1), (2040, 1, 1));

impl Pki {
    /// A root CA (`ca.pem`), an intermediate, and leaves signed by the
    /// intermediate, each written with its intermediate after it (`NAME.pem`)
    /// and its key (`NAME.key`). Also a leaf sent without its intermediate, a
    /// self-signed one, an expired one and one from an unknown CA.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root = CertifiedIssuer::self_signed(
            ca_params("attrelay Test Root CA"),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let inter = CertifiedIssuer::signed_by(
            ca_params("attrelay Test Issuing CA"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let other_root = CertifiedIssuer::self_signed(
            ca_params("Untrusted Root CA"),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ca.pem"), root.pem()).unwrap();

        let leaves: &[(&str, &str, &[&str], Validity)] = &[
            ("contoso", "mail.contoso.com", &["mail.contoso.com"], LONG),
            (
                "renewed",
                "mail.contoso-mail.net",
                &["mail.contoso-mail.net"],
                LONG,
            ),
            ("wildcard", "*.contoso.com", &["*.contoso.com"], LONG),
            (
                "multisan",
                "mail1.contoso.com",
                &["mail1.contoso.com", "mail2.contoso.com"],
                LONG,
            ),
            (
                "fabrikam-host",
                "mail.fabrikam.com",
                &["mail.fabrikam.com"],
                LONG,
            ),
            (
                "tie",
                "mail.northwind.com",
                &["mail.northwind.com", "mail.adatum.com"],
                LONG,
            ),
            ("adatum-host", "mail.adatum.com", &["mail.adatum.com"], LONG),
            (
                "northwind-host",
                "mail.northwind.com",
                &["mail.northwind.com"],
                LONG,
            ),
            (
                "expired",
                "mail.contoso.com",
                &["mail.contoso.com"],
                ((2014, 1, 1), (2016, 1, 1)),
            ),
        ];
        for (file, cn, sans, (from, to)) in leaves {
            let key = KeyPair::generate().unwrap();
            let cert = leaf_params(cn, sans, *from, *to)
                .signed_by(&key, &inter)
                .unwrap();
            std::fs::write(
                dir.path().join(format!("{file}.pem")),
                format!("{}{}", cert.pem(), inter.pem()),
            )
            .unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
            if *file == "contoso" {
                std::fs::write(dir.path().join("contoso-leaf-only.pem"), cert.pem()).unwrap();
                std::fs::write(
                    dir.path().join("contoso-leaf-only.key"),
                    key.serialize_pem(),
                )
                .unwrap();
            }
        }
        // Issued directly by the root: for clients that send only their leaf
        // (swaks 20201014 has no option to send a chain).
        let key = KeyPair::generate().unwrap();
        let direct = leaf_params("mail.contoso.com", &["mail.contoso.com"], LONG.0, LONG.1)
            .signed_by(&key, &root)
            .unwrap();
        std::fs::write(dir.path().join("contoso-direct.pem"), direct.pem()).unwrap();
        std::fs::write(dir.path().join("contoso-direct.key"), key.serialize_pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let selfsigned = leaf_params("mail.contoso.com", &["mail.contoso.com"], LONG.0, LONG.1)
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("selfsigned.pem"), selfsigned.pem()).unwrap();
        std::fs::write(dir.path().join("selfsigned.key"), key.serialize_pem()).unwrap();
        let key = KeyPair::generate().unwrap();
        let foreign = leaf_params("mail.contoso.com", &["mail.contoso.com"], LONG.0, LONG.1)
            .signed_by(&key, &other_root)
            .unwrap();
        std::fs::write(dir.path().join("foreign.pem"), foreign.pem()).unwrap();
        std::fs::write(dir.path().join("foreign.key"), key.serialize_pem()).unwrap();
        Pki { dir, issuer: inter }
    }

    /// Signs `params` with the issuing CA and writes `NAME.pem` (leaf, then
    /// the intermediate) and `NAME.key`.
    pub fn leaf(&self, name: &str, params: CertificateParams) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, format!("{}{}", cert.pem(), self.issuer.pem())).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `NAME.pem` and `NAME.key`.
    pub fn cert(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }

    /// Writes the fixture configuration, trusting `ca.pem`, and returns its path.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.path("relay.toml");
        std::fs::write(
            &path,
            fixture_toml(&format!("client_ca = [\"ca.pem\"]\n{extra}")),
        )
        .unwrap();
        path
    }
}

fn quoted(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(", "))
}

/// The seed fixture (`attrelay_policy::scenarios::fixture`) as a configuration
/// file, so that the component runs against the relay's real directory.
/// `server_extra` goes into `[server]`.
pub fn fixture_toml(server_extra: &str) -> String {
    // Every test relay gets its own admin port (the default, 9725, is shared).
    let mut t = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[server]\nhostname = \"relay.example.test\"\n{server_extra}\n"
    );
    for tenant in fixture().tenants {
        writeln!(
            t,
            "[[tenant]]\nid = {:?}\naccepted_domains = {}",
            tenant.id,
            quoted(&tenant.accepted_domains)
        )
        .unwrap();
        for c in tenant.connectors {
            let kind = match c.kind {
                ConnectorKind::OnPremises => "on-premises",
                ConnectorKind::Partner => "partner",
            };
            writeln!(
                t,
                "\n[[tenant.connector]]\nname = {:?}\ntype = \"{kind}\"\nenabled = {}",
                c.name, c.enabled
            )
            .unwrap();
            if !c.sender_ip_addresses.is_empty() {
                writeln!(
                    t,
                    "sender_ip_addresses = {}",
                    quoted(&c.sender_ip_addresses)
                )
                .unwrap();
            }
            if let Some(n) = &c.tls_sender_certificate_name {
                writeln!(t, "tls_sender_certificate_name = {n:?}").unwrap();
            }
            if c.kind == ConnectorKind::Partner {
                writeln!(
                    t,
                    "sender_domains = {}\nrestrict_domains_to_ip_addresses = {}\nrestrict_domains_to_certificate = {}",
                    quoted(&c.sender_domains),
                    c.restrict_domains_to_ip_addresses,
                    c.restrict_domains_to_certificate
                )
                .unwrap();
                if !c.recipient_domains.is_empty() {
                    writeln!(t, "recipient_domains = {}", quoted(&c.recipient_domains)).unwrap();
                }
            }
        }
        t.push('\n');
    }
    t
}

/// A checked edit of a configuration text: every `from` replaced by `to`,
/// and `from` must occur — an edit that matches nothing is a test that no
/// longer tests what it says.
pub trait Edit {
    fn edited(&self, from: &str, to: &str) -> String;
}

impl Edit for str {
    fn edited(&self, from: &str, to: &str) -> String {
        assert!(
            self.contains(from),
            "the edit {from:?} -> {to:?} matches nothing in:\n{self}"
        );
        self.replace(from, to)
    }
}

/// The fixture as a validated configuration.
pub fn fixture_config() -> Config {
    Config::parse(Path::new("fixture.toml"), &fixture_toml(""))
        .expect("the fixture configuration is valid")
}

/// One engine per test process: compiling the component is the slow part.
pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        PolicyEngine::new(EngineLimits {
            max_instances: 64,
            ..EngineLimits::default()
        })
        .unwrap()
    })
}

/// Builds a test component under `tests/components/NAME` for wasm32-wasip2
/// and returns the `.wasm` path.
pub fn build_component(name: &str) -> PathBuf {
    build_crate(&format!("tests/components/{name}"))
}

/// Builds the component crate at `dir` (relative to the workspace root) for
/// wasm32-wasip2, in a target directory of its own, and returns the `.wasm`.
pub fn build_crate(dir: &str) -> PathBuf {
    let dir = root().join(dir);
    let name = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
    let target = root().join("target/test-components");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build a test component");
    assert!(status.success(), "building {} failed", dir.display());
    let wasm = target
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(wasm.exists(), "{} missing", wasm.display());
    wasm
}

/// `attrelay cert inspect PEM --config CONFIG --at AT`: its standard output,
/// with exit status 0 asserted.
pub fn cert_inspect(pem: &str, config: &str, at: &str) -> String {
    succeeded(&attrelay(&[
        "cert", "inspect", pem, "--config", config, "--at", at,
    ]))
}

/// The standard output of a run that must have exited with status 0 (its
/// output, both streams, in the failure message otherwise).
pub fn succeeded(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(out), stderr(out));
    stdout(out)
}

/// Runs the built `attrelay` binary.
pub fn attrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attrelay"))
        .args(args)
        .output()
        .expect("spawning attrelay")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds the gateway component (`gateway/`, profile `gateway`) for
/// wasm32-wasip2 in a target directory of its own and returns the `.wasm`.
pub fn build_gateway() -> PathBuf {
    build_gateway_in("target/test-components", &[])
}

/// The gateway component with the feature `faults` (misbehaviour on
/// request, for the hosts' fail-closed tests).
pub fn build_faulty_gateway() -> PathBuf {
    build_gateway_in("target/test-components-faults", &["--features", "faults"])
}

/// The gateway crate built as another of its components (`socket`,
/// `directory-provider`), copied out of the shared target directory under
/// its own name. One build at a time: they share the artifact's path.
pub fn build_gateway_variant(feature: &str) -> PathBuf {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let built = build_gateway_in("target/test-components-variants", &["--features", feature]);
    let copy = built.with_file_name(format!("{feature}.wasm"));
    std::fs::copy(&built, &copy).unwrap();
    copy
}

fn build_gateway_in(target: &str, extra: &[&str]) -> PathBuf {
    let target = root().join(target);
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "build",
            "--locked",
            "-p",
            "attrelay-gateway",
            "--profile",
            "gateway",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target)
        .args(extra)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("running cargo to build the gateway component");
    assert!(status.success(), "building the gateway component failed");
    let wasm = target.join("wasm32-wasip2/gateway/attrelay_gateway.wasm");
    assert!(wasm.exists(), "{} missing", wasm.display());
    wasm
}

/// Adds `addrs` (IPv4 or IPv6) to the loopback interface (root, like the
/// Postfix tests): distinct clients on one machine. Fails, never skips,
/// without them.
pub fn add_loopback_addresses(addrs: &[&str]) {
    for a in addrs {
        let v6 = a.contains(':');
        let mut args = vec![if v6 { "-6" } else { "-4" }, "addr", "add"];
        let with_prefix = format!("{a}/{}", if v6 { 128 } else { 32 });
        args.extend([with_prefix.as_str(), "dev", "lo"]);
        if v6 {
            args.push("nodad");
        }
        let out = Command::new("ip")
            .args(&args)
            .output()
            .expect("running ip(8) from iproute2");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("File exists") || err.contains("already assigned"),
            "cannot add {a} to lo (this test needs root and iproute2): {err}"
        );
    }
}

/// `examples/tenant-js`, whose `node_modules` `.ci/run` installs (`npm ci`).
fn tenant_js_dir() -> PathBuf {
    let dir = root().join("examples/tenant-js");
    assert!(
        dir.join("node_modules/.bin/componentize-js").exists(),
        "examples/tenant-js/node_modules is missing: run `npm ci` there (.ci/run does)"
    );
    dir
}

/// The JavaScript tenant policy of `examples/tenant-js`, built by its own
/// `npm run build` (componentize-js), once per test run.
pub fn build_tenant_js() -> PathBuf {
    static WASM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        let dir = tenant_js_dir();
        let out = Command::new("npm")
            .args(["run", "build"])
            .current_dir(&dir)
            .output()
            .expect("running npm run build in examples/tenant-js");
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        dir.join("tenant-js.wasm")
    })
    .clone()
}

/// `tests/components/rogue-tenant-js/rogue.js`, built with the example's
/// componentize-js and its options, once per test run.
pub fn build_rogue_tenant_js() -> PathBuf {
    static WASM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    WASM.get_or_init(|| {
        let dir = tenant_js_dir();
        let wasm = root().join("target/test-components/rogue-tenant-js.wasm");
        std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        let out = Command::new(dir.join("node_modules/.bin/componentize-js"))
            .arg("--wit")
            .arg(root().join("wit/policy.wit"))
            .args([
                "--world-name",
                "tenant-rules",
                "--disable",
                "http",
                "fetch-event",
                "stdio",
                "--out",
            ])
            .arg(&wasm)
            .arg(root().join("tests/components/rogue-tenant-js/rogue.js"))
            .current_dir(&dir)
            .output()
            .expect("running componentize-js");
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        wasm
    })
    .clone()
}
