//! Runner: the engine in Rust, as the relay and the policy service use it —
//! the relay's configuration of the kit's tenant tables, the embedded
//! default policy on wasmtime, the evaluation (recipient lists, sender
//! routing) and certificate facts from the kit's chains.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use attrelay::certificate::{TrustAnchors, inspect_chain, unix_time};
use attrelay::config::Config;
use attrelay::directory::Directory;
use attrelay::evaluation::Evaluation;
use attrelay::policy::{LoadedPolicy, PolicySource};
use attrelay_policy::model::{ClientCertificate, SessionFacts, TlsFacts};
use attrelay_policy::replies::grace_warning;
use attrelay_policy::scenarios::{KIT_JSON, KitScenario, kit};
use rustls_pki_types::CertificateDer;

use super::{Host, Observed, anchor_pem, assert_passes, chain, run_kit};
use crate::support;

/// The kit's `directory` as the relay's `[[tenant]]` tables (TOML).
pub fn tenant_tables() -> String {
    let doc: serde_json::Value = serde_json::from_str(KIT_JSON).unwrap();
    toml::to_string(&doc["directory"]).unwrap()
}

/// A relay configuration of the kit: its tenants, trusting its anchor.
pub fn kit_config() -> Config {
    let text = format!(
        "[server]\nhostname = {:?}\nclient_ca = [{:?}]\n\n{}",
        kit().server_hostname,
        anchor_pem().display(),
        tenant_tables()
    );
    Config::parse(Path::new("kit.toml"), &text).expect("the kit's tables are a valid configuration")
}

/// How a host turns a client's chain into facts.
type Inspect = fn(&[CertificateDer<'_>], &TrustAnchors, i64) -> Option<ClientCertificate>;

/// The relay's way: the engine verifies the chain at the session time.
fn verified(
    chain: &[CertificateDer<'_>],
    anchors: &TrustAnchors,
    at: i64,
) -> Option<ClientCertificate> {
    inspect_chain(chain, anchors, unix_time(at)).ok()
}

pub struct EngineHost {
    directory: Arc<Directory>,
    anchors: Arc<TrustAnchors>,
    policies: HashMap<BTreeMap<String, String>, LoadedPolicy>,
    inspect: Inspect,
}

impl EngineHost {
    fn new(inspect: Inspect) -> EngineHost {
        EngineHost {
            directory: Arc::new(kit_config().directory()),
            anchors: Arc::new(TrustAnchors::load(&[anchor_pem()]).unwrap()),
            policies: HashMap::new(),
            inspect,
        }
    }

    fn facts(&self, s: &KitScenario) -> SessionFacts {
        let mut facts = s.facts();
        if let Some(name) = s.tls.as_ref().and_then(|t| t.certificate.as_ref()) {
            let der = chain(name);
            let certs: Vec<CertificateDer<'_>> = der
                .iter()
                .map(|d| CertificateDer::from(d.as_slice()))
                .collect();
            facts.tls = Some(TlsFacts {
                client_certificate: (self.inspect)(&certs, &self.anchors, facts.time),
                ..facts.tls.take().unwrap()
            });
        }
        facts
    }
}

impl Host for EngineHost {
    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        let settings: Vec<(String, String)> = s.settings.clone().into_iter().collect();
        let policy = self
            .policies
            .entry(s.settings.clone())
            .or_insert_with(|| {
                support::engine()
                    .load(&PolicySource::Embedded, &settings)
                    .unwrap()
            })
            .clone();
        let evaluation = Arc::new(Evaluation {
            anchors: self.anchors.clone(),
            ..Evaluation::new(policy, self.directory.clone())
        });
        let mut judges = evaluation.session(self.facts(s), "kit");
        let observe = |v: &attrelay_policy::model::Verdict| {
            Observed::from_verdict(v, grace_warning(v).is_some())
        };
        let mail = observe(&judges.mail_from(&s.sender));
        let rcpts = s
            .recipients
            .iter()
            .map(|r| observe(&judges.rcpt_to(&s.sender, &r.address)))
            .collect();
        (mail, rcpts)
    }
}

#[test]
fn the_engine_passes_the_kit() {
    assert_passes(&mut EngineHost::new(verified));
}

/// The kit's recorded facts are what the engine makes of its chains.
#[test]
fn the_kits_certificate_facts_are_the_engines() {
    let anchors = TrustAnchors::load(&[anchor_pem()]).unwrap();
    let at = attrelay_policy::settings::parse_instant("2017-08-01T00:00:00Z").unwrap();
    for (name, want) in &kit().certificates {
        let der = chain(name);
        let certs: Vec<CertificateDer<'_>> = der
            .iter()
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        let got = inspect_chain(&certs, &anchors, unix_time(at)).unwrap();
        assert_eq!(
            (
                got.verified,
                &got.subject,
                &got.common_names,
                &got.dns_names
            ),
            (
                want.verified,
                &want.subject,
                &want.common_names,
                &want.dns_names
            ),
            "{name}: {:?}",
            got.verification_error
        );
    }
}

/// A host that takes any parsable leaf for verified (as a gateway trusting
/// Haraka's `tls.verified`, or no check at all, would) fails the kit.
#[test]
fn a_host_skipping_chain_verification_fails_the_kit() {
    fn trusting(
        chain: &[CertificateDer<'_>],
        anchors: &TrustAnchors,
        at: i64,
    ) -> Option<ClientCertificate> {
        inspect_chain(chain, anchors, unix_time(at))
            .ok()
            .map(|mut c| {
                c.verified = true;
                c.verification_error = None;
                c
            })
    }
    let (failures, _) = run_kit(&mut EngineHost::new(trusting));
    let text = failures.join("\n");
    for must_fail in [
        "self-signed certificate is not authentication",
        "expired certificate is not authentication",
        "a chain without its intermediate is not verified",
        "a name-constrained CA: a name outside its constraints fails verification",
    ] {
        assert!(
            text.contains(must_fail),
            "the wrong host passed {must_fail:?}:\n{text}"
        );
    }
}
