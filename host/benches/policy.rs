//! Policy benchmarks, each against a baseline measured in the same run:
//!
//! - `decide/*`: one session (MAIL FROM + every RCPT TO of every seed
//!   scenario) through the compiled default component, against the same rules
//!   called natively (`attrelay_policy::Session`): the cost of the sandbox.
//! - `load/*`: loading a component by compiling it, against loading it from the
//!   precompiled cache (a restart or a reload of a known component).
//! - `policyd/*`: one Postfix RCPT request answered by the running relay's
//!   policy service over loopback TCP (request parsing, the blocking pool, a
//!   fresh policy session, the reply), against the same decision made by
//!   calling the component directly: the cost of the front end.
//!
//! Run with `cargo bench -p attrelay --bench policy`; report ratios, not
//! absolute times (these machines are noisy).

use std::sync::Arc;

use attrelay::directory::Directory;
use attrelay::policy::{EngineLimits, PolicyEngine, PolicySource};
use attrelay_policy::scenarios::{fixture, scenarios};
use attrelay_policy::{Session, Settings};
use criterion::{Criterion, criterion_group, criterion_main};

fn decide(c: &mut Criterion) {
    let all = scenarios();
    let engine = PolicyEngine::new(EngineLimits::default()).unwrap();
    let policy = engine.load(&PolicySource::Embedded, &[]).unwrap();
    let directory = Arc::new(Directory::from_fixture(&fixture()));
    let native_dir = fixture();
    let mut g = c.benchmark_group("decide");
    g.bench_function("native", |b| {
        b.iter(|| {
            for s in &all {
                let mut session = Session::open(&native_dir, Settings::default(), s.facts.clone());
                std::hint::black_box(session.mail_from(s.sender));
                for (r, _) in &s.recipients {
                    std::hint::black_box(session.rcpt_to(r));
                }
            }
        })
    });
    g.bench_function("component", |b| {
        b.iter(|| {
            for s in &all {
                let mut session = policy.open_session(directory.clone(), &s.facts);
                std::hint::black_box(session.mail_from(s.sender));
                for (r, _) in &s.recipients {
                    std::hint::black_box(session.rcpt_to(r));
                }
            }
        })
    });
    g.finish();
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("policy.wasm");
    std::fs::write(&wasm, attrelay::policy::DEFAULT_POLICY).unwrap();
    let source = PolicySource::File(wasm);
    let cache = dir.path().join("cache");
    // Fill the disk cache once.
    PolicyEngine::with_cache(EngineLimits::default(), Some(cache.clone()))
        .unwrap()
        .load(&source, &[])
        .unwrap();
    let mut g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("compile", |b| {
        b.iter(|| {
            let engine = PolicyEngine::new(EngineLimits::default()).unwrap();
            std::hint::black_box(engine.load(&source, &[]).unwrap());
        })
    });
    g.bench_function("disk-cache", |b| {
        b.iter(|| {
            let engine =
                PolicyEngine::with_cache(EngineLimits::default(), Some(cache.clone())).unwrap();
            std::hint::black_box(engine.load(&source, &[]).unwrap());
        })
    });
    g.finish();
}

/// A relay with only contoso and a policy service on loopback.
const POLICYD_CONFIG: &str = r#"
[admin]
enabled = false

[server]
hostname = "relay.bench.test"
listen = ["127.0.0.1:0"]

[policyd]
listen = ["127.0.0.1:0"]

[[tenant]]
id = "contoso"
accepted_domains = ["contoso.com"]

[[tenant.connector]]
name = "Contoso on-premises"
type = "on-premises"
sender_ip_addresses = ["203.0.113.0/24"]
tls_sender_certificate_name = "*.contoso.com"
"#;

const POLICYD_REQUEST: &[u8] = b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=203.0.113.7\nclient_name=unknown\nhelo_name=mail.contoso.com\nsender=john@contoso.com\nrecipient=someone@internet.example\nrecipient_count=0\ninstance=1a.2b.3c.0\nsize=0\nencryption_protocol=\nccert_subject=\nccert_fingerprint=\n\n";

fn policyd(c: &mut Criterion) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{POLICYD_CONFIG}\n[spool]\npath = {:?}\n\n[delivery]\ndirectory = {:?}\n",
        dir.path().join("spool").display().to_string(),
        dir.path().join("out").display().to_string()
    );
    let config = attrelay::config::Config::parse(&dir.path().join("bench.toml"), &text).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt.block_on(attrelay::relay::start(&config)).unwrap();
    let addr = relay.policyd[0];
    let (mut r, mut w) = rt.block_on(async {
        let (r, w) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        (BufReader::new(r), w)
    });

    let facts = attrelay_policy::SessionFacts {
        client_ip: "203.0.113.7".parse().unwrap(),
        helo: "mail.contoso.com".into(),
        server_hostname: "relay.bench.test".into(),
        time: attrelay::clock::now(),
        tls: None,
    };
    let eval = relay.context.evaluation.load_full();
    let mut g = c.benchmark_group("policyd");
    g.bench_function("component", |b| {
        b.iter(|| {
            let mut session = eval.policy.open_session(eval.directory.clone(), &facts);
            std::hint::black_box(session.mail_from("john@contoso.com"));
            std::hint::black_box(session.rcpt_to("someone@internet.example"))
        })
    });
    g.bench_function("wire", |b| {
        b.iter(|| {
            rt.block_on(async {
                w.write_all(POLICYD_REQUEST).await.unwrap();
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert_eq!(line, "action=OK\n");
                line.clear();
                r.read_line(&mut line).await.unwrap();
            })
        })
    });
    g.finish();
    drop((r, w));
    rt.block_on(relay.stop());
}

criterion_group!(benches, decide, load, policyd);
criterion_main!(benches);
