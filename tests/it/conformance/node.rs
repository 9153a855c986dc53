//! Runner: the gateway component in Node 20, transpiled by jco 1.35
//! (`gateways/haraka`, `npm run build`), with the plugin's deny-all WASI
//! (`gateways/haraka/lib/wasi.mjs`): `conformance/runners/node.mjs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use attrelay_policy::scenarios::KitScenario;
use serde::Deserialize;

use super::gateway::gateway_wasm;
use super::{Host, Observed, assert_passes, certs};
use crate::support;

/// `gateways/haraka`, whose `node_modules` `.ci/run` installs (`npm ci`).
pub fn plugin_dir() -> PathBuf {
    let dir = support::root().join("gateways/haraka");
    assert!(
        dir.join("node_modules/@bytecodealliance/jco").is_dir(),
        "gateways/haraka/node_modules is missing: run `npm ci` there (.ci/run does)"
    );
    dir
}

/// The gateway component transpiled for Node, once per test run.
pub fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| transpile(gateway_wasm(), "gateway-js"))
}

/// The component with the feature `faults`, transpiled for Node.
pub fn faulty_dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| transpile(&support::build_faulty_gateway(), "gateway-faults-js"))
}

/// `npm run build` of the plugin, for `wasm`, into a directory of its own.
fn transpile(wasm: &Path, name: &str) -> PathBuf {
    let dist = std::env::temp_dir().join(format!("attrelay-{name}-{}", std::process::id()));
    let out = Command::new("node")
        .arg("scripts/build.mjs")
        .current_dir(plugin_dir())
        .env("ATTRELAY_GATEWAY_WASM", wasm)
        .env("ATTRELAY_GATEWAY_DIST", &dist)
        .output()
        .expect("running node scripts/build.mjs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dist
}

#[derive(Deserialize)]
struct NodeVerdict {
    code: u16,
    enhanced: String,
    tenant: Option<String>,
    reason: Option<String>,
    warning: bool,
    attributed: Option<String>,
}

impl NodeVerdict {
    fn observed(&self) -> Observed {
        Observed {
            code: self.code,
            enhanced: self.enhanced.clone(),
            tenant: self.tenant.clone(),
            reason: self.reason.clone(),
            warning: self.warning,
        }
    }
}

#[derive(Deserialize)]
struct NodeScenario {
    mail: NodeVerdict,
    rcpts: Vec<NodeVerdict>,
}

/// The whole kit judged in one Node process; answers looked up by name.
struct NodeGateway {
    results: HashMap<String, NodeScenario>,
}

impl NodeGateway {
    fn run_all() -> NodeGateway {
        let out = Command::new("node")
            .arg(support::root().join("conformance/runners/node.mjs"))
            .arg(dist())
            .arg(certs())
            .output()
            .expect("running node conformance/runners/node.mjs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        NodeGateway {
            results: serde_json::from_slice(&out.stdout).expect("the runner's JSON"),
        }
    }
}

impl Host for NodeGateway {
    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        let r = &self.results[&s.name];
        for (v, want) in r.rcpts.iter().zip(&s.recipients) {
            if v.code / 100 == 2 {
                assert_eq!(v.attributed, v.tenant, "{} / {}", s.name, want.address);
            }
        }
        (
            r.mail.observed(),
            r.rcpts.iter().map(NodeVerdict::observed).collect(),
        )
    }
}

#[test]
fn the_gateway_component_in_node_passes_the_kit() {
    assert_passes(&mut NodeGateway::run_all());
}
