//! Operating a live relay: hot swaps under load, refused broken reloads, the
//! precompiled cache, tenant policies in their own sandboxes, shadow
//! evaluation, the decision log with `policy diff` / `policy validate`, and
//! metrics scraped over HTTP.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use attrelay::config::Config;
use attrelay::relay::RelayHandle;
use support::relay::Setup;
use support::smtp::{Client, Sink};
use support::{Pki, attrelay as run_attrelay, stdout};

const CONTOSO_IP: &str = "127.0.1.10";
const UNKNOWN_IP: &str = "127.0.2.77";
const EXT: &str = "someone@internet.example";

/// A relay whose configuration file can be rewritten by the test.
struct Live {
    handle: RelayHandle,
    pki: Pki,
    config: PathBuf,
    sink: Sink,
}

/// The wire fixture in `pki`'s directory delivering to `sink`, with
/// `policy_section` merged and each tenant's `extra` keys merged into it.
fn toml(pki: &Pki, sink: &Sink, policy_section: &str, tenant_extra: &[(&str, &str)]) -> String {
    let mut setup = Setup::for_pki(pki)
        .set("delivery.next_hop", sink.addr.to_string())
        .merge(policy_section);
    for (tenant, extra) in tenant_extra {
        setup = setup.merge_tenant(tenant, extra);
    }
    setup.toml()
}

impl Live {
    async fn start(policy_section: &str, tenant_extra: &[(&str, &str)]) -> Live {
        Self::start_written(|pki, sink, config| {
            std::fs::write(config, toml(pki, sink, policy_section, tenant_extra)).unwrap();
        })
        .await
    }

    /// A relay on the configuration `write` puts at `relay.toml` (a file,
    /// or a link to one) in the PKI's folder.
    async fn start_written(write: impl FnOnce(&Pki, &Sink, &Path)) -> Live {
        let pki = Pki::new();
        let sink = Sink::start().await;
        let config = pki.path("relay.toml");
        write(&pki, &sink, &config);
        let cfg = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
        let handle = attrelay::relay::start(&cfg).await.unwrap();
        Live {
            handle,
            pki,
            config,
            sink,
        }
    }

    fn rewrite(&self, policy_section: &str, tenant_extra: &[(&str, &str)]) {
        std::fs::write(
            &self.config,
            toml(&self.pki, &self.sink, policy_section, tenant_extra),
        )
        .unwrap();
    }

    fn admin(&self) -> SocketAddr {
        self.handle.admin.unwrap()
    }

    async fn session(&self, source: &str, cert: Option<&str>) -> Client {
        let cert = cert.map(|name| self.pki.cert(name));
        let cert = cert.as_ref().map(|(p, k)| (p.as_path(), k.as_path()));
        Client::session(self.handle.addrs[0], source, cert).await
    }
}

/// A minimal HTTP/1.1 request; returns (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    crate::support::http::request(addr, method, path, None).await
}

/// The default component as a file, with `tag` appended as a custom section
/// so that each variant has its own SHA-256 but the same behaviour.
fn default_component(dir: &Path, tag: &str) -> PathBuf {
    let mut bytes = attrelay::policy::DEFAULT_POLICY.to_vec();
    let name = b"attrelay-test";
    let payload = tag.as_bytes();
    let content_len = 1 + name.len() + payload.len();
    assert!(content_len < 128 && name.len() < 128);
    bytes.extend_from_slice(&[0x00, content_len as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join(format!("policy-{tag}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn policy_section(component: &Path, enforcement: &str) -> String {
    format!(
        "[policy]\ncomponent = {:?}\n[policy.settings]\nenforcement = \"{enforcement}\"\n",
        component.display().to_string()
    )
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_swaps_under_concurrent_sessions_never_mix_policies() {
    let dir = tempfile::tempdir().unwrap();
    let a = default_component(dir.path(), "a");
    let b = default_component(dir.path(), "b");
    // A: enforced (550 ATTR36); B: grace period (451 ATTR36).
    let live = Live::start(&policy_section(&a, "2017-07-05T00:00:00Z"), &[]).await;
    let addr = live.handle.addrs[0];
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            let mut sessions = 0;
            while !stop.is_cancelled() {
                let (mut c, g) = Client::connect_from(addr, CONTOSO_IP.parse().unwrap()).await;
                assert_eq!(g.code, 220);
                assert_eq!(c.cmd("EHLO onprem.contoso.com").await.code, 250);
                assert_eq!(
                    c.cmd("MAIL FROM:<>").await.code,
                    250,
                    "MAIL must never fail"
                );
                let mut replies = Vec::new();
                for i in 0..4 {
                    let r = c.cmd(&format!("RCPT TO:<r{i}@internet.example>")).await;
                    replies.push(format!("{} {}", r.code, r.enhanced));
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                assert!(
                    replies.iter().all(|r| r == &replies[0]),
                    "one session, one policy: {replies:?}"
                );
                assert!(
                    replies[0] == "550 5.7.64" || replies[0] == "451 4.4.4",
                    "{replies:?}"
                );
                seen.insert(replies[0].clone());
                let _ = c.cmd("QUIT").await;
                sessions += 1;
            }
            (sessions, seen)
        }));
    }
    let mut generations = Vec::new();
    for i in 0..8 {
        let (component, enforcement) = if i % 2 == 0 {
            (&b, "2099-01-01T00:00:00Z")
        } else {
            (&a, "2017-07-05T00:00:00Z")
        };
        live.rewrite(&policy_section(component, enforcement), &[]);
        let (code, body) = http(live.admin(), "POST", "/reload").await;
        assert_eq!(code, 200, "{body}");
        let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
        generations.push(outcome["generation"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.cancel();
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for c in clients {
        let (n, s) = c.await.unwrap();
        total += n;
        seen.extend(s);
    }
    assert!(total >= 8, "only {total} sessions ran");
    assert_eq!(seen.len(), 2, "both policies served: {seen:?}");
    // Reloads may also be triggered by the file watcher; generations only grow.
    assert!(
        generations.windows(2).all(|w| w[1] > w[0]),
        "{generations:?}"
    );
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_leaves_the_old_policy_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = default_component(dir.path(), "good");
    let live = Live::start(&policy_section(&a, "2017-07-05T00:00:00Z"), &[]).await;
    let before = status(live.admin()).await;

    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x0d\0\x01\0 truncated").unwrap();
    live.rewrite(&policy_section(&broken, "2017-07-05T00:00:00Z"), &[]);
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("not a valid WebAssembly component"), "{body}");
    // A configuration error is refused the same way, naming file and line.
    std::fs::write(
        &live.config,
        "[server]\nhostname = \"x.example\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 422);
    assert!(body.contains("relay.toml:3:1: server.bogus"), "{body}");
    // A component that traps on the built-in scenarios is refused too.
    let rogue = support::build_component("rogue-policy");
    live.rewrite(
        &format!(
            "[policy]\ncomponent = {:?}\n[policy.settings]\nbehavior = \"trap\"\n",
            rogue.display().to_string()
        ),
        &[],
    );
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 422);
    assert!(body.contains("refused: scenario"), "{body}");

    let after = status(live.admin()).await;
    assert_eq!(before["sha256"], after["sha256"]);
    assert_eq!(before["generation"], after["generation"]);
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(
        c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"),
        "the old policy still decides"
    );
    let (_, metrics) = http(live.admin(), "GET", "/metrics").await;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("attrelay_reloads_total{outcome=\"failure\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    // Three refused by POST /reload (the file watcher may have refused them too).
    assert!(failures >= 3, "{metrics}");
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_trigger_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let a = default_component(dir.path(), "watch-a");
    let live = Live::start(&policy_section(&a, "2017-07-05T00:00:00Z"), &[]).await;
    let g0 = status(live.admin()).await["generation"].as_u64().unwrap();
    live.rewrite(&policy_section(&a, "2099-01-01T00:00:00Z"), &[]);
    let g = generation_after(live.admin(), g0).await;
    assert!(g > g0, "the configuration change was not picked up");
    assert_the_longer_grace_decides(&live).await;
    live.handle.stop().await;
}

/// After a reload to `policy_section(.., "2099-01-01T00:00:00Z")`: an NDR
/// from contoso's server to the Internet is in the grace period again.
async fn assert_the_longer_grace_decides(live: &Live) {
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    assert!(
        c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(451, "4.4.4"),
        "the new settings decide"
    );
}

/// The reload generation once it is past `g0`, or `g0` after 10 s.
async fn generation_after(admin: SocketAddr, g0: u64) -> u64 {
    for _ in 0..100 {
        let g = status(admin).await["generation"].as_u64().unwrap();
        if g > g0 {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_written_in_two_steps_is_applied_only_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = default_component(dir.path(), "two-steps");
    let live = Live::start(&policy_section(&a, "2017-07-05T00:00:00Z"), &[]).await;
    let path = live.config.clone();
    let running = std::fs::read_to_string(&path).unwrap();
    let g0 = status(live.admin()).await["generation"].as_u64().unwrap();
    let settled = || tokio::time::sleep(attrelay::reload::SETTLE * 4);
    // The file cut short, as an editor leaves it between truncating and
    // writing the end — at a line that leaves valid TOML: every tenant
    // would go, and contoso's mail get a permanent 550.
    let cut = running.find("[[tenant]]").unwrap();
    std::fs::write(&path, &running[..cut]).unwrap();
    settled().await;
    std::fs::write(&path, "").unwrap();
    settled().await;
    assert_eq!(
        status(live.admin()).await["generation"].as_u64().unwrap(),
        g0,
        "a truncated or empty file is not applied"
    );
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    // A new configuration written in two steps, the second a moment
    // later: applied once, whole, after the file stopped changing.
    let new = toml(
        &live.pki,
        &live.sink,
        &policy_section(&a, "2099-01-01T00:00:00Z"),
        &[],
    );
    std::fs::write(&path, &new[..new.len() / 2]).unwrap();
    tokio::time::sleep(attrelay::reload::SETTLE / 3).await;
    std::fs::write(&path, &new).unwrap();
    let g = generation_after(live.admin(), g0).await;
    assert_eq!(g, g0 + 1, "applied once");
    assert_the_longer_grace_decides(&live).await;
    live.handle.stop().await;
}

#[test]
fn reloading_a_cached_component_skips_compilation() {
    use attrelay::policy::cache::Provenance;
    use attrelay::policy::{EngineLimits, PolicyEngine, PolicySource};
    let dir = tempfile::tempdir().unwrap();
    let component = default_component(dir.path(), "cache");
    let cache = dir.path().join("cache");
    let engine = PolicyEngine::with_cache(EngineLimits::default(), Some(cache.clone())).unwrap();
    let source = PolicySource::File(component);
    let t = Instant::now();
    let first = engine.load(&source, &[]).unwrap();
    let compiled = t.elapsed();
    assert_eq!(first.provenance(), Provenance::Compiled);
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one artifact written"
    );
    let t = Instant::now();
    assert_eq!(
        engine.load(&source, &[]).unwrap().provenance(),
        Provenance::Memory
    );
    let memory = t.elapsed();
    // A fresh engine (a restart) finds the artifact on disk.
    let engine2 = PolicyEngine::with_cache(EngineLimits::default(), Some(cache)).unwrap();
    let t = Instant::now();
    let again = engine2.load(&source, &[]).unwrap();
    let disk = t.elapsed();
    assert_eq!(again.provenance(), Provenance::Disk);
    assert_eq!(again.sha256(), first.sha256());
    // Reported, not asserted: timings belong to benchmarks (see the closing note).
    eprintln!(
        "policy load: compile {:.1} ms, disk cache {:.1} ms, memory cache {:.1} ms (compile/disk = {:.1}x)",
        compiled.as_secs_f64() * 1e3,
        disk.as_secs_f64() * 1e3,
        memory.as_secs_f64() * 1e3,
        compiled.as_secs_f64() / disk.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_policies_run_sandboxed_for_their_own_tenant_only() {
    let grace = support::build_crate("examples/tenant-longer-grace");
    let blocked = support::build_crate("examples/tenant-blocked-domains");
    let rogue = support::build_component("rogue-tenant");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let live = Live::start(
        "",
        &[
            ("contoso", &format!("policy = {}\npolicy_settings = {{ grace_until = \"2099-01-01T00:00:00Z\" }}", q(&grace))),
            ("fabrikam", &format!("policy = {}\npolicy_settings = {{ domains = \"blocked.example, competitor.example\" }}", q(&blocked))),
            ("adatum", &format!("policy = {}\npolicy_timeout_ms = 50\npolicy_memory_limit_mib = 8\npolicy_settings = {{ behavior = \"loop\" }}", q(&rogue))),
            ("northwind", &format!("policy = {}\npolicy_settings = {{ behavior = \"steal\" }}", q(&rogue))),
            ("woodgrove", &format!("policy = {}\npolicy_settings = {{ behavior = \"vouch\" }}", q(&rogue))),
            ("litware", &format!("policy = {}\npolicy_settings = {{ behavior = \"warn\" }}", q(&rogue))),
            ("woodgrove-eu", &format!("policy = {}\npolicy_settings = {{ behavior = \"attribute\" }}", q(&rogue))),
            ("woodgrove-mail", &format!("policy = {}\npolicy_settings = {{ behavior = \"aliased-lines\" }}", q(&rogue))),
            ("tailspintoys", &format!("policy = {}\npolicy_settings = {{ behavior = \"grace\" }}", q(&rogue))),
        ],
    )
    .await;
    // contoso's longer grace: ATTR36 is deferred although enforcement passed.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.4.4"), "{r:?}");
    // fabrikam's blocked domains; its other mail flows.
    let mut c = live.session(UNKNOWN_IP, Some("fabrikam-host")).await;
    assert_eq!(c.cmd("MAIL FROM:<john@fabrikam.com>").await.code, 250);
    let r = c.cmd("RCPT TO:<ceo@mail.competitor.example>").await;
    assert!(r.is(550, "5.7.1"), "{r:?}");
    assert_eq!(
        r.text,
        "Relaying to competitor.example refused by tenant policy"
    );
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    // adatum's policy loops: only adatum's mail is deferred, within its budget...
    let mut c = live.session(UNKNOWN_IP, Some("adatum-host")).await;
    assert_eq!(c.cmd("MAIL FROM:<john@adatum.com>").await.code, 250);
    let t = Instant::now();
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // ...while everyone else's keeps flowing, in the same relay, at the same time.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    // A tenant policy cannot attribute mail to another tenant.
    let mut c = live.session(UNKNOWN_IP, Some("northwind-host")).await;
    assert_eq!(c.cmd("MAIL FROM:<john@northwind.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(451, "4.3.5"));
    // Incoming mail for contoso still reaches the tenant policy and passes.
    let mut c = live.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    assert!(c.cmd("RCPT TO:<kate@contoso.com>").await.is(250, "2.1.5"));
    // A tenant policy can neither claim that a connector vouched for the
    // sender of Internet mail (which would earn forged senders full DSNs)
    // nor write the relay's own fields: X-Attrelay-*, or an
    // X-Attributed-Tenant naming another tenant.
    let mut c = live.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let r = c.cmd("RCPT TO:<kate@woodgrove.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    let r = c.cmd("RCPT TO:<kate@litware.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    let r = c.cmd("RCPT TO:<kate@eu.woodgrove.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    // Nor make the relay copy 100 MB out of it: refused at the boundary,
    // within the budget.
    let t = Instant::now();
    let r = c.cmd("RCPT TO:<kate@mail.woodgrove.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Nor put words in the relay's warning field: an attr36 accept where
    // the base policy found no ATTR36.
    let mut c = live.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let r = c.cmd("RCPT TO:<kate@tailspintoys.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    let st = status(live.admin()).await;
    assert_eq!(st["tenant_policies"].as_array().unwrap().len(), 9);
    live.handle.stop().await;
}

/// Tenant policies written in JavaScript (componentize-js) run under the
/// same budgets as Rust ones: the example's longer grace period applies to
/// its tenant, and a trap, a loop, an allocation bomb or a verdict naming
/// another tenant each defer only their own tenant's mail (451 4.3.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_policies_in_javascript_run_sandboxed_for_their_own_tenant_only() {
    let grace = support::build_tenant_js();
    let rogue = support::build_rogue_tenant_js();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let live = Live::start(
        "",
        &[
            ("contoso", &format!("policy = {}\npolicy_settings = {{ grace_until = \"2099-01-01T00:00:00Z\" }}", q(&grace))),
            ("fabrikam", &format!("policy = {}\npolicy_settings = {{ behavior = \"trap\" }}", q(&rogue))),
            ("adatum", &format!("policy = {}\npolicy_timeout_ms = 100\npolicy_settings = {{ behavior = \"loop\" }}", q(&rogue))),
            ("northwind", &format!("policy = {}\npolicy_memory_limit_mib = 16\npolicy_settings = {{ behavior = \"bomb\" }}", q(&rogue))),
            ("woodgrove", &format!("policy = {}\npolicy_settings = {{ behavior = \"steal\" }}", q(&rogue))),
        ],
    )
    .await;
    // contoso's longer grace, in JavaScript: ATTR36 deferred, not rejected.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert!(r.is(451, "4.4.4"), "{r:?}");
    // Each rogue policy defers its own tenant's mail, within its budget.
    for (tenant, cert) in [
        ("fabrikam", "fabrikam-host"),
        ("adatum", "adatum-host"),
        ("northwind", "northwind-host"),
    ] {
        let mut c = live.session(UNKNOWN_IP, Some(cert)).await;
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<john@{tenant}.com>")).await.code,
            250
        );
        let t = Instant::now();
        let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
        assert!(r.is(451, "4.3.5"), "{tenant}: {r:?}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{tenant}: {:?}",
            t.elapsed()
        );
    }
    // Incoming mail for woodgrove: its policy names another tenant.
    let mut c = live.session(UNKNOWN_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<a@internet.example>").await.code, 250);
    let r = c.cmd("RCPT TO:<kate@woodgrove.com>").await;
    assert!(r.is(451, "4.3.5"), "{r:?}");
    // ...while a tenant without a policy is judged as ever, in the same session.
    let r = c.cmd("RCPT TO:<kate@tailspintoys.com>").await;
    assert!(r.is(250, "2.1.5"), "{r:?}");
    // And contoso's mail keeps flowing beside the rogues.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_decision_log_diff_validate_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let default = default_component(dir.path(), "default");
    let rogue = support::build_component("rogue-policy");
    let log = dir.path().join("decisions.jsonl");
    // The candidate accepts everything: a shadow must never let that through.
    let live = Live::start(
        &format!(
            "[policy]\ncomponent = {:?}\nshadow = {:?}\ndecision_log = {:?}\n",
            default.display().to_string(),
            rogue.display().to_string(),
            log.display().to_string()
        ),
        &[],
    )
    .await;
    let mut c = live.session(UNKNOWN_IP, None).await;
    assert_eq!(
        c.cmd("MAIL FROM:<spammer@internet.example>").await.code,
        250
    );
    assert!(
        c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(550, "5.7.64"),
        "the shadow never changes a reply"
    );
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    let (wire, _) = (b"Subject: m\r\n\r\nx\r\n.\r\n", ());
    assert_eq!(c.data(wire).await.code, 250);
    live.sink.wait_for(1).await;

    // The sink has the message before the relay has counted the attempt.
    let mut metrics = String::new();
    for _ in 0..100 {
        let (code, m) = http(live.admin(), "GET", "/metrics").await;
        assert_eq!(code, 200);
        metrics = m;
        if metrics.contains("attrelay_deliveries_total{outcome=\"delivered\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for line in [
        "attrelay_decisions_total{stage=\"rcpt-to\",reason=\"tenant-attribution\",tenant=\"none\",code=\"550\"} 1",
        "attrelay_decisions_total{stage=\"rcpt-to\",reason=\"originating-ip\",tenant=\"contoso\",code=\"250\"} 1",
        "attrelay_sessions_total 2",
        "attrelay_deliveries_total{outcome=\"delivered\"} 1",
        "attrelay_policy_latency_seconds_count 4",
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    // MAIL and RCPT of both sessions: the candidate answers "250 2.1.5 OK" with no tenant.
    assert!(
        metrics.contains("attrelay_shadow_differences_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE attrelay_queue_size gauge"),
        "{metrics}"
    );
    live.handle.stop().await;

    // The decision log replays: the default policy against itself, then against the candidate.
    // (Written by a thread of its own, after the replies.)
    let mut records = Vec::new();
    for _ in 0..200 {
        records = attrelay::decisions::read(&log).unwrap();
        if records.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records.len(), 4, "{records:?}");
    let cfg = live.config.to_str().unwrap().to_string();
    let same = run_attrelay(&[
        "policy",
        "diff",
        default.to_str().unwrap(),
        default.to_str().unwrap(),
        "--decisions",
        log.to_str().unwrap(),
        "--config",
        &cfg,
    ]);
    assert_eq!(same.status.code(), Some(0), "{}", stdout(&same));
    assert!(
        stdout(&same).contains("4 decisions in 2 sessions replayed; 0 differ"),
        "{}",
        stdout(&same)
    );
    let diff = run_attrelay(&[
        "policy",
        "diff",
        default.to_str().unwrap(),
        rogue.to_str().unwrap(),
        "--decisions",
        log.to_str().unwrap(),
        "--config",
        &cfg,
    ]);
    let text = stdout(&diff);
    assert_eq!(diff.status.code(), Some(1), "{text}");
    assert!(
        text.contains("RCPT TO:<someone@internet.example> (from <spammer@internet.example>)"),
        "{text}"
    );
    assert!(text.contains("old: 550 5.7.64 TenantAttribution; Relay Access Denied tenant=- reason=tenant-attribution"), "{text}");
    assert!(
        text.contains("new: 250 2.1.5 OK tenant=- reason=-"),
        "{text}"
    );

    let ok = run_attrelay(&["policy", "validate", default.to_str().unwrap()]);
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    assert!(
        stdout(&ok).contains("every verdict matches the reference rules"),
        "{}",
        stdout(&ok)
    );
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"not wasm").unwrap();
    let invalid = run_attrelay(&["policy", "validate", bad.to_str().unwrap()]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(
        stdout(&invalid).starts_with("INVALID:"),
        "{}",
        stdout(&invalid)
    );
}

/// `policy validate` tells the world by the exports: a tenant policy (the
/// JavaScript example) is validated as one, its settings checked; usage
/// errors come before any work.
#[test]
fn policy_validate_knows_both_worlds() {
    let js = support::build_tenant_js();
    let js = js.to_str().unwrap();
    let ok = run_attrelay(&[
        "policy",
        "validate",
        js,
        "--setting",
        "grace_until=2099-01-01T00:00:00Z",
    ]);
    let text = stdout(&ok);
    assert_eq!(ok.status.code(), Some(0), "{text}");
    assert!(
        text.contains("implements attrelay:policy/tenant-rules"),
        "{text}"
    );
    assert!(
        text.contains("recipients judged by the tenant policy, all answered"),
        "{text}"
    );
    // Without its required setting, the tenant policy refuses to start.
    let refused = run_attrelay(&["policy", "validate", js]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).contains("INVALID: ") && stdout(&refused).contains("grace_until"),
        "{}",
        stdout(&refused)
    );
    for args in [vec!["--setting", "oops"], vec!["--tenant", "contoso"]] {
        let mut all = vec!["policy", "validate", js];
        all.extend(args);
        let usage = run_attrelay(&all);
        assert_eq!(usage.status.code(), Some(2), "{all:?}");
        assert!(
            stdout(&usage).is_empty(),
            "nothing done before a usage error: {}",
            stdout(&usage)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_listing_and_flush() {
    let live = Live::start("", &[]).await;
    let queue_size = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("attrelay_queue_size "))
            .map(|v| v.trim().to_string())
    };
    // Delivered at once: nothing waits.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(c.cmd(&format!("RCPT TO:<{EXT}>")).await.is(250, "2.1.5"));
    assert_eq!(c.data(b"Subject: now\r\n\r\nx\r\n.\r\n").await.code, 250);
    // The next hop defers this one; it then waits for its retry (60 s).
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    assert!(
        c.cmd("RCPT TO:<defer-once@internet.example>")
            .await
            .is(250, "2.1.5")
    );
    assert_eq!(c.data(b"Subject: later\r\n\r\nx\r\n.\r\n").await.code, 250);
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http(live.admin(), "GET", "/metrics").await.1;
        if metrics.contains("attrelay_deliveries_total{outcome=\"deferred\"} 1")
            && metrics.contains("attrelay_deliveries_total{outcome=\"delivered\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_size(&metrics).as_deref(), Some("1"), "{metrics}");
    let age: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("attrelay_queue_oldest_age_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!((0..60).contains(&age), "{age}");
    let (_, status) = http(live.admin(), "GET", "/status").await;
    assert!(status.contains("\"queue\":1"), "{status}");

    // The operator's view: GET /queue and `attrelay queue list`, alike.
    // (The attempt is counted in the metrics a moment before its envelope
    // is rewritten in the spool, which /queue reads: wait for that.)
    let (mut code, mut body) = (0, String::new());
    let mut queue: Vec<attrelay::spool::QueueEntry> = Vec::new();
    for _ in 0..100 {
        (code, body) = http(live.admin(), "GET", "/queue").await;
        queue = serde_json::from_str(&body).unwrap();
        if queue.first().is_some_and(|e| e.attempts >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, 200);
    assert_eq!(queue.len(), 1, "{body}");
    let e = &queue[0];
    assert_eq!(e.pending, vec!["defer-once@internet.example".to_string()]);
    assert_eq!(
        (e.attempts, e.sender.as_str(), e.tenant.as_deref()),
        (1, "john@contoso.com", Some("contoso"))
    );
    assert!(
        e.last_error.as_deref().unwrap_or("").starts_with("451"),
        "{e:?}"
    );
    assert!(
        e.next_attempt > attrelay::clock::now() + 30,
        "waiting for its 60 s backoff: {e:?}"
    );
    let cfg = live.config.to_str().unwrap().to_string();
    let listed = run_attrelay(&["queue", "list", "--config", &cfg, "--json"]);
    assert_eq!(listed.status.code(), Some(0));
    let from_cli: Vec<attrelay::spool::QueueEntry> =
        serde_json::from_str(&stdout(&listed)).unwrap();
    assert_eq!(from_cli, queue);
    let table = stdout(&run_attrelay(&["queue", "list", "--config", &cfg]));
    assert!(
        table.contains(e.id.as_str())
            && table.contains("to   defer-once@internet.example")
            && table.contains("last error: 451"),
        "{table}"
    );
    assert!(table.contains("1 message in the queue"), "{table}");

    // A flush makes it due now instead of in a minute.
    let (code, body) = http(live.admin(), "POST", "/queue/flush").await;
    assert_eq!((code, body.trim()), (200, "{\"flushed\":1}"));
    let delivered = tokio::time::timeout(Duration::from_secs(10), live.sink.wait_for(2))
        .await
        .expect("delivered right after the flush");
    assert!(
        delivered
            .iter()
            .any(|m| m.recipients == vec!["defer-once@internet.example".to_string()])
    );
    let mut body = String::new();
    for _ in 0..100 {
        body = http(live.admin(), "GET", "/queue").await.1;
        if body.trim() == "[]" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body.trim(), "[]");
    let table = stdout(&run_attrelay(&["queue", "list", "--config", &cfg]));
    assert!(table.starts_with("queue empty"), "{table}");
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_settings_that_wait_for_a_restart() {
    let live = Live::start("", &[]).await;
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"restart_required\":[]"), "{body}");
    // A listener limit and the delivery concurrency change: the reload
    // applies the rest and says these two wait for a restart.
    Setup::read(&live.config)
        .set("server.max_recipients", 7)
        .set("delivery.concurrency", 3)
        .write();
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"restart_required\":[\"server\",\"delivery\"]"),
        "{body}"
    );
    // The running limit stays until the restart.
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
    for i in 0..8 {
        let r = c.cmd(&format!("RCPT TO:<r{i}@internet.example>")).await;
        assert_eq!(r.code, 250, "recipient {i}: {r:?}");
    }
    live.handle.stop().await;
}

/// A tenant at the end of the configuration whose only connector admits
/// [`REVOCABLE_IP`]; the text before it is the configuration without it.
const REVOCABLE: &str = "\n[[tenant]]\nid = \"revocable\"\naccepted_domains = [\"revocable.example\"]\n\n[[tenant.connector]]\nname = \"revocable-ip\"\ntype = \"on-premises\"\nsender_ip_addresses = [\"127.0.9.9\"]\n";
const REVOCABLE_IP: &str = "127.0.9.9";

/// The reply to `RCPT TO` of a revocable tenant's mail to the Internet from
/// its server.
async fn revocable_rcpt(live: &Live) -> u16 {
    let mut c = live.session(REVOCABLE_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<app@revocable.example>").await.code, 250);
    c.cmd(&format!("RCPT TO:<{EXT}>")).await.code
}

/// Waits until the revocable tenant's mail is refused (`550`); how long it took.
async fn revoked_within(live: &Live, limit: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit + Duration::from_secs(5) {
        if revocable_rcpt(live).await == 550 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the revocation was not applied");
}

/// Writes `text` to a temporary name beside `path` and renames it over.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_file_renamed_into_place_revokes_at_once() {
    let live = Live::start("", &[]).await;
    let base = std::fs::read_to_string(&live.config).unwrap();
    replace_by_rename(&live.config, &format!("{base}{REVOCABLE}"));
    let g0 = status(live.admin()).await["generation"].as_u64().unwrap();
    assert!(generation_after(live.admin(), g0).await > g0);
    assert_eq!(
        revocable_rcpt(&live).await,
        250,
        "admitted while its connector exists"
    );
    // The revocation: the same file without its end, renamed into place.
    // It is a beginning of the running text, yet whole by construction.
    replace_by_rename(&live.config, &base);
    let took = revoked_within(&live, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_link_swap_is_applied() {
    // relay.toml -> ..data/relay.toml, ..data -> v1: how Kubernetes mounts
    // a ConfigMap, re-pointing ..data atomically for each new version.
    let live = Live::start_written(|pki, sink, config| {
        let dir = config.parent().unwrap();
        std::fs::create_dir(dir.join("v1")).unwrap();
        let text = format!("{}{REVOCABLE}", toml(pki, sink, "", &[]));
        std::fs::write(dir.join("v1/relay.toml"), text).unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/relay.toml", config).unwrap();
    })
    .await;
    assert_eq!(revocable_rcpt(&live).await, 250);
    let dir = live.config.parent().unwrap().to_path_buf();
    std::fs::create_dir(dir.join("v2")).unwrap();
    std::fs::write(
        dir.join("v2/relay.toml"),
        toml(&live.pki, &live.sink, "", &[]),
    )
    .unwrap();
    std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let took = revoked_within(&live, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // And the next version too: the watch followed the link to v2.
    std::fs::remove_dir_all(dir.join("v1")).unwrap();
    std::fs::create_dir(dir.join("v3")).unwrap();
    let text = format!("{}{REVOCABLE}", toml(&live.pki, &live.sink, "", &[]));
    std::fs::write(dir.join("v3/relay.toml"), text).unwrap();
    std::os::unix::fs::symlink("v3", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let started = Instant::now();
    while revocable_rcpt(&live).await != 250 {
        assert!(started.elapsed() < Duration::from_secs(2), "v3 not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_a_link_is_applied() {
    let live = Live::start_written(|pki, sink, config| {
        let text = format!("{}{REVOCABLE}", toml(pki, sink, "", &[]));
        std::fs::write(config, text).unwrap();
    })
    .await;
    assert_eq!(revocable_rcpt(&live).await, 250);
    let dir = live.config.parent().unwrap().to_path_buf();
    std::fs::write(
        dir.join("managed.toml"),
        toml(&live.pki, &live.sink, "", &[]),
    )
    .unwrap();
    std::os::unix::fs::symlink("managed.toml", dir.join("relay.toml.link")).unwrap();
    std::fs::rename(dir.join("relay.toml.link"), &live.config).unwrap();
    let took = revoked_within(&live, Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    live.handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_trust_anchor_file_is_reloaded_and_an_untouched_one_is_not() {
    let live = Live::start("", &[]).await;
    let g0 = status(live.admin()).await["generation"].as_u64().unwrap();
    // The same text renamed over the configuration: nothing changed, so
    // nothing is reloaded.
    let text = std::fs::read_to_string(&live.config).unwrap();
    replace_by_rename(&live.config, &text);
    assert_eq!(
        generation_after(live.admin(), g0).await,
        g0 + 1,
        "the first notification reloads"
    );
    let g1 = g0 + 1;
    replace_by_rename(&live.config, &text);
    tokio::time::sleep(attrelay::reload::SETTLE * 4).await;
    assert_eq!(
        status(live.admin()).await["generation"].as_u64().unwrap(),
        g1,
        "the same content again reloads nothing"
    );
    // The CA file the configuration names, replaced (a compromised CA
    // taken out): reloaded, although the configuration is unchanged.
    let other = support::Pki::new();
    let ca = live.pki.path("ca.pem");
    let tmp = live.pki.path("ca.pem.tmp");
    std::fs::copy(other.path("ca.pem"), &tmp).unwrap();
    std::fs::rename(&tmp, &ca).unwrap();
    assert!(
        generation_after(live.admin(), g1).await > g1,
        "the anchors are reloaded"
    );
    // The old CA's certificates no longer verify in a new session.
    let mut c = live.session(UNKNOWN_IP, Some("contoso")).await;
    assert_eq!(c.cmd("MAIL FROM:<>").await.code, 250);
    let r = c.cmd(&format!("RCPT TO:<{EXT}>")).await;
    assert_eq!(r.code, 550, "{r:?}");
    live.handle.stop().await;
}

/// A change the next start would refuse — a server certificate that is no
/// PEM, in a restart-only section — is refused by the reload too, and the
/// running configuration keeps serving: no reload leaves a file behind on
/// which the relay could not start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_what_the_next_start_would_refuse() {
    let live = Live::start("", &[]).await;
    std::fs::write(live.pki.path("server.der"), [0x30u8, 0x82, 0x01, 0x0a]).unwrap();
    Setup::read(&live.config)
        .set("server.tls_cert", "server.der")
        .set("server.tls_key", "contoso.key")
        .write();
    let (code, body) = http(live.admin(), "POST", "/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("tls_cert"), "{body}");
    let mut c = live.session(CONTOSO_IP, None).await;
    assert_eq!(c.cmd("MAIL FROM:<john@contoso.com>").await.code, 250);
}
