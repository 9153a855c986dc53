//! Every seed scenario, run through the compiled default policy component as
//! the relay runs it: the embedded `.wasm`, the wasmtime engine, a fresh store
//! per session, and the relay's own indexed directory built from a
//! configuration file.

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;

use attrelay::policy::{LoadedPolicy, PolicySource};
use attrelay_policy::scenarios::{check, fixture, scenarios};
use attrelay_policy::{Session, Settings};

fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One loaded policy per distinct settings.
fn policies() -> HashMap<Vec<(String, String)>, LoadedPolicy> {
    let mut map = HashMap::new();
    for s in scenarios() {
        let settings = owned(&s.settings);
        map.entry(settings.clone()).or_insert_with(|| {
            support::engine()
                .load(&PolicySource::Embedded, &settings)
                .unwrap()
        });
    }
    map
}

#[test]
fn every_seed_scenario_through_the_component() {
    let directory = Arc::new(support::fixture_config().directory());
    let policies = policies();
    let mut failures = Vec::new();
    let mut checked = 0;
    for s in scenarios() {
        let policy = &policies[&owned(&s.settings)];
        let mut session = policy.open_session(directory.clone(), &s.facts);
        let mail = session.mail_from(s.sender);
        assert!(
            session.failure().is_none(),
            "{}: {:?}",
            s.name,
            session.failure()
        );
        assert_eq!(
            (mail.code, mail.enhanced.as_str()),
            (250, "2.1.0"),
            "{}: MAIL FROM {mail:?}",
            s.name
        );
        for (rcpt, expect) in &s.recipients {
            checked += 1;
            if let Err(e) = check(expect, &session.rcpt_to(rcpt)) {
                failures.push(format!("{} / {rcpt}: {e}", s.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 35, "only {checked} recipients checked");
}

/// The component and the native rules are the same rules: identical verdicts,
/// explanations included, for every recipient of every scenario.
#[test]
fn component_and_native_rules_agree_exactly() {
    let directory = Arc::new(support::fixture_config().directory());
    let policies = policies();
    for s in scenarios() {
        let mut wasm = policies[&owned(&s.settings)].open_session(directory.clone(), &s.facts);
        let settings = Settings::from_pairs(s.settings.iter().copied()).unwrap();
        let mut native = Session::open(fixture(), settings, s.facts.clone());
        assert_eq!(
            wasm.mail_from(s.sender),
            native.mail_from(s.sender),
            "{}",
            s.name
        );
        for (rcpt, _) in &s.recipients {
            assert_eq!(
                wasm.rcpt_to(rcpt),
                native.rcpt_to(rcpt),
                "{} / {rcpt}",
                s.name
            );
        }
    }
}

#[test]
fn bad_settings_are_refused_at_load() {
    let err = support::engine()
        .load(
            &PolicySource::Embedded,
            &owned(&[("before_enforcement", "sometimes")]),
        )
        .err()
        .expect("bad settings must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains("refused its settings") && msg.contains("before_enforcement"),
        "{msg}"
    );
}

#[test]
fn sessions_do_not_share_state() {
    // Two sessions on one loaded policy, interleaved: each keeps its own sender.
    let directory = Arc::new(support::fixture_config().directory());
    let policy = support::engine()
        .load(&PolicySource::Embedded, &[])
        .unwrap();
    let all = scenarios();
    let by_ip = all
        .iter()
        .find(|s| s.name == "originating by IP with an accepted sender domain")
        .unwrap();
    let mut a = policy.open_session(directory.clone(), &by_ip.facts);
    let mut b = policy.open_session(directory.clone(), &by_ip.facts);
    a.mail_from("john@contoso.com");
    b.mail_from("");
    assert_eq!(a.rcpt_to("x@internet.example").code, 250);
    assert_eq!(b.rcpt_to("x@internet.example").code, 550);
    assert_eq!(a.rcpt_to("y@internet.example").code, 250);
}
