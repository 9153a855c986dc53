//! Runner: the gateway component (`attrelay-gateway.wasm`) on wasmtime, as
//! any Rust host would embed it: deny-all WASI, one instance configured
//! with the kit's tenant tables, trust anchor and settings, the raw DER
//! chains handed over per session.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use attrelay_policy::replies::{ATTRIBUTION_HEADER, WARNING_HEADER};
use attrelay_policy::scenarios::{KitScenario, kit};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::engine::tenant_tables;
use super::{Host, Observed, anchor_pem, assert_passes, chain};
use crate::support;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/gateway",
        world: "attrelay-gateway",
    });
}

use bindings::AttrelayGateway;
use bindings::exports::attrelay::gateway::gateway as api;

/// The component, built once for the test run (in a target directory of
/// its own: the outer cargo holds ours).
pub fn gateway_wasm() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(support::build_gateway)
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One configured instance per settings, as a host keeps one per worker.
pub struct WasmtimeGateway {
    engine: Engine,
    component: Component,
    linker: Linker<State>,
    instances: HashMap<BTreeMap<String, String>, (Store<State>, AttrelayGateway)>,
}

impl WasmtimeGateway {
    pub fn new() -> WasmtimeGateway {
        Self::from_file(gateway_wasm())
    }

    /// A component of the same world at `wasm` (a composed gateway).
    pub fn from_file(wasm: &Path) -> WasmtimeGateway {
        let engine = Engine::default();
        let component = Component::from_file(&engine, wasm).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
        WasmtimeGateway {
            engine,
            component,
            linker,
            instances: HashMap::new(),
        }
    }

    fn instance(
        &mut self,
        settings: &BTreeMap<String, String>,
    ) -> &mut (Store<State>, AttrelayGateway) {
        let (engine, component, linker) = (&self.engine, &self.component, &self.linker);
        self.instances.entry(settings.clone()).or_insert_with(|| {
            // Deny-all: no files, environment, arguments or network.
            let state = State {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            };
            let mut store = Store::new(engine, state);
            let gateway = AttrelayGateway::instantiate(&mut store, component, linker).unwrap();
            let configuration = api::Configuration {
                directory: tenant_tables(),
                directory_format: api::DirectoryFormat::Toml,
                client_trust_anchors: std::fs::read_to_string(anchor_pem()).unwrap(),
                settings: settings
                    .iter()
                    .map(|(k, v)| api::Setting {
                        key: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            };
            gateway
                .attrelay_gateway_gateway()
                .call_configure(&mut store, &configuration)
                .unwrap()
                .unwrap();
            (store, gateway)
        })
    }
}

fn ip(text: &str) -> api::IpAddress {
    match text.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            api::IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            api::IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

/// The facts as a host has them: the chain as received.
fn facts(s: &KitScenario) -> api::SessionFacts {
    let kit = kit();
    api::SessionFacts {
        client_ip: ip(&s.client_ip),
        helo: kit.helo.clone(),
        server_hostname: kit.server_hostname.clone(),
        time: api::Datetime {
            seconds: attrelay_policy::settings::parse_instant(&s.time).unwrap(),
            nanoseconds: 0,
        },
        tls: s.tls.as_ref().map(|t| api::Tls {
            protocol: kit.tls_protocol.clone(),
            cipher: kit.tls_cipher.clone(),
            client_chain: t.certificate.as_deref().map(chain).unwrap_or_default(),
        }),
    }
}

/// What the gateway answered; the warning is the field it asks the host to
/// write, and an accepted recipient's attribution field names its tenant.
fn observe(v: &api::Verdict, rcpt: bool) -> Observed {
    let header = |name: &str| {
        v.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
    };
    if rcpt && v.action == bindings::attrelay::policy::types::Action::Accept {
        assert_eq!(header(ATTRIBUTION_HEADER), v.tenant, "{v:?}");
    }
    Observed {
        code: v.code,
        enhanced: v.enhanced.clone(),
        tenant: v.tenant.clone(),
        reason: v.reason.clone(),
        warning: header(WARNING_HEADER).is_some(),
    }
}

impl Host for WasmtimeGateway {
    fn run(&mut self, s: &KitScenario, _certs: &Path) -> (Observed, Vec<Observed>) {
        let facts = facts(s);
        let (store, gateway) = self.instance(&s.settings);
        let api = gateway.attrelay_gateway_gateway();
        let session = api.session().call_constructor(&mut *store, &facts).unwrap();
        let mail = api
            .session()
            .call_mail_from(&mut *store, session, &s.sender)
            .unwrap();
        let rcpts = s
            .recipients
            .iter()
            .map(|r| {
                let v = api.session().call_rcpt_to(&mut *store, session, &r.address);
                observe(&v.unwrap(), true)
            })
            .collect();
        session.resource_drop(&mut *store).unwrap();
        (observe(&mail, false), rcpts)
    }
}

#[test]
fn the_gateway_component_on_wasmtime_passes_the_kit() {
    assert_passes(&mut WasmtimeGateway::new());
}

/// What a deny-all host must provide: WASI's standard streams,
/// environment, exit and an insecure seed (Rust's standard library links
/// them; the gateway never reads the environment) and the types-only
/// interfaces of `attrelay:policy` and `attrelay:gateway`. No files, clocks,
/// sockets or HTTP.
#[test]
fn the_gateway_component_imports_only_what_deny_all_hosts_provide() {
    let engine = Engine::default();
    let component = Component::from_file(&engine, gateway_wasm()).unwrap();
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let allowed = |i: &str| {
        [
            "attrelay:policy/types@0.1.0",
            "attrelay:gateway/types@0.1.0",
        ]
        .contains(&i)
            || ["wasi:io/", "wasi:cli/", "wasi:random/insecure-seed"]
                .iter()
                .any(|p| i.starts_with(p))
    };
    assert!(imports.iter().all(|i| allowed(i)), "{imports:?}");
}
