//! Policy benchmarks, each against a baseline measured in the same run:
//!
//! - `decide/*`: one session (MAIL FROM + every RCPT TO of every seed
//!   scenario) through the compiled default component, against the same rules
//!   called natively (`attrelay_policy::Session`): the cost of the sandbox.
//! - `load/*`: loading a component by compiling it, against loading it from the
//!   precompiled cache (a restart or a reload of a known component).
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

criterion_group!(benches, decide, load);
criterion_main!(benches);
