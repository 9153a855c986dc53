//! What components cost a host, each against a baseline in the same run:
//!
//! - the gateway component (`attrelay-gateway.wasm`) on wasmtime: a new
//!   instance (instantiate + configure with the kit's tenants), and one
//!   session (facts with a client certificate chain, MAIL FROM, RCPT TO) on
//!   a warm instance, against the same crate called natively;
//! - a tenant policy in JavaScript (`examples/tenant-js`, componentize-js)
//!   against the same rules in Rust (`examples/tenant-longer-grace`): size,
//!   first compile, instantiation (+ configure), a call, and the linear
//!   memory an instance starts with.
//!
//! `bench/components.sh` builds the components and runs this, then the
//! same gateway measurements in Node (`bench/gateway-node.mjs`). Paths:
//! `ATTRELAY_GATEWAY_WASM`, `TENANT_JS_WASM`, `TENANT_RUST_WASM`; `CERTS`
//! (the kit's certificates, `conformance/make-certs.py`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attrelay::policy::bindings::tenant::TenantRules;
use attrelay::policy::bindings::tenant::attrelay::policy::tenant_directory;
use attrelay::policy::bindings::types as wit;
use attrelay_policy::scenarios::{KIT_JSON, kit};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod gateway_bindings {
    wasmtime::component::bindgen!({
        path: "../wit/gateway",
        world: "attrelay-gateway",
    });
}
use gateway_bindings::AttrelayGateway;
use gateway_bindings::exports::attrelay::gateway::gateway as api;

/// Median time of one `op` over `runs` runs (after one warm-up).
fn median(runs: usize, mut op: impl FnMut()) -> Duration {
    op();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn path(var: &str, default: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(default)
    });
    assert!(
        p.exists(),
        "{} missing: run bench/components.sh (or set {var})",
        p.display()
    );
    p
}

/// A store's state: deny-all WASI, and the largest linear memory asked for.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    peak: usize,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.peak = self.peak.max(desired);
        Ok(true)
    }
    fn table_growing(&mut self, _: usize, _: usize, _: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl wit::Host for State {}

impl tenant_directory::Host for State {
    fn tenant_id(&mut self) -> String {
        "contoso".into()
    }
    fn accepted_domains(&mut self) -> Vec<String> {
        vec!["contoso.com".into()]
    }
    fn connectors(&mut self) -> Vec<wit::Connector> {
        Vec::new()
    }
}

fn store(engine: &Engine) -> Store<State> {
    let mut store = Store::new(
        engine,
        State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            peak: 0,
        },
    );
    store.limiter(|s| s);
    store
}

fn gateway(engine: &Engine) {
    let certs = path("CERTS", "target/bench-certs");
    let wasm = path(
        "ATTRELAY_GATEWAY_WASM",
        "target/wasm32-wasip2/gateway/attrelay_gateway.wasm",
    );
    let doc: serde_json::Value = serde_json::from_str(KIT_JSON).unwrap();
    let directory = doc["directory"].to_string();
    let anchors = std::fs::read_to_string(certs.join("kit-root.pem")).unwrap();
    let chain: Vec<Vec<u8>> = attrelay::pem::read_certificates(&certs.join("contoso-host.pem"))
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let component = Component::from_file(engine, &wasm).unwrap();
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let configuration = api::Configuration {
        directory: directory.clone(),
        directory_format: api::DirectoryFormat::Json,
        client_trust_anchors: anchors.clone(),
        settings: Vec::new(),
    };
    let instance = || {
        let mut s = store(engine);
        let instance = pre.instantiate(&mut s).unwrap();
        let g = AttrelayGateway::new(&mut s, &instance).unwrap();
        g.attrelay_gateway_gateway()
            .call_configure(&mut s, &configuration)
            .unwrap()
            .unwrap();
        (s, g)
    };
    let per_instance = median(20, || drop(instance()));
    let (mut s, g) = instance();
    let facts = api::SessionFacts {
        client_ip: gateway_bindings::attrelay::policy::types::IpAddress::Ipv4((192, 0, 2, 77)),
        helo: "mail.contoso.com".into(),
        server_hostname: "relay.example.test".into(),
        time: gateway_bindings::attrelay::policy::types::Datetime {
            seconds: 1_501_545_600,
            nanoseconds: 0,
        },
        tls: Some(api::Tls {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_chain: chain.clone(),
        }),
    };
    let api = g.attrelay_gateway_gateway();
    let per_session = median(200, || {
        let session = api.session().call_constructor(&mut s, &facts).unwrap();
        std::hint::black_box(api.session().call_mail_from(&mut s, session, "").unwrap());
        std::hint::black_box(
            api.session()
                .call_rcpt_to(&mut s, session, "someone@internet.example")
                .unwrap(),
        );
        session.resource_drop(&mut s).unwrap();
    });
    // The baseline: the same crate, natively.
    let native = attrelay_gateway::Gateway::configure(&attrelay_gateway::Configuration {
        directory,
        directory_format: attrelay_gateway::tenants::Format::Json,
        client_trust_anchors: anchors,
        settings: Vec::new(),
    })
    .unwrap();
    let raw = attrelay_gateway::RawFacts {
        client_ip: "192.0.2.77".parse().unwrap(),
        helo: "mail.contoso.com".into(),
        server_hostname: "relay.example.test".into(),
        time: 1_501_545_600,
        tls: Some(attrelay_gateway::RawTls {
            protocol: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_chain: chain,
        }),
    };
    let native_session = median(200, || {
        let mut session = native.session(raw.clone());
        std::hint::black_box(session.mail_from(""));
        std::hint::black_box(session.rcpt_to("someone@internet.example"));
    });
    println!(
        "gateway component on wasmtime ({} bytes)",
        std::fs::metadata(&wasm).unwrap().len()
    );
    println!(
        "  instance (instantiate + configure, {} tenants): {:.2} ms",
        kit().directory.tenant.len(),
        ms(per_instance)
    );
    println!(
        "  linear memory after configure: {} KiB",
        s.data().peak / 1024
    );
    println!(
        "  session with a client chain, MAIL + RCPT: {:.1} us; natively {:.1} us: {:.2}x",
        us(per_session),
        us(native_session),
        per_session.as_secs_f64() / native_session.as_secs_f64()
    );
}

fn tenant(engine: &Engine, name: &str, wasm: &PathBuf) -> (Duration, Duration) {
    let bytes = std::fs::read(wasm).unwrap();
    let compile = median(3, || drop(Component::new(engine, &bytes).unwrap()));
    let component = Component::new(engine, &bytes).unwrap();
    let mut linker: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).unwrap();
    TenantRules::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).unwrap();
    let pre = linker.instantiate_pre(&component).unwrap();
    let settings = vec![attrelay::policy::bindings::tenant_guest::Setting {
        key: "grace_until".into(),
        value: "2099-01-01T00:00:00Z".into(),
    }];
    let instance = || {
        let mut s = store(engine);
        let instance = pre.instantiate(&mut s).unwrap();
        let t = TenantRules::new(&mut s, &instance).unwrap();
        t.attrelay_policy_tenant_policy()
            .call_configure(&mut s, &settings)
            .unwrap()
            .unwrap();
        (s, t)
    };
    let instantiate = median(20, || drop(instance()));
    let (mut s, t) = instance();
    let facts = attrelay::policy::store::facts_to_wit(&kit().scenarios[0].facts());
    let p = t.attrelay_policy_tenant_policy();
    let session = p.session().call_constructor(&mut s, &facts).unwrap();
    let base = wit::Verdict {
        action: wit::Action::Reject,
        code: 550,
        enhanced: "5.7.64".into(),
        text: "Relay Access Denied ATTR36".into(),
        tenant: Some("contoso".into()),
        reason: Some("attr36".into()),
        explanation: vec!["base".into()],
        headers: Vec::new(),
    };
    let call = median(500, || {
        std::hint::black_box(
            p.session()
                .call_rcpt_to(&mut s, session, "", "someone@internet.example", &base)
                .unwrap(),
        );
    });
    println!("tenant policy in {name} ({} bytes)", bytes.len());
    println!("  first compile: {:.0} ms", ms(compile));
    println!(
        "  instance (instantiate + configure): {:.2} ms",
        ms(instantiate)
    );
    println!("  rcpt-to call: {:.1} us", us(call));
    println!("  linear memory at start: {} KiB", s.data().peak / 1024);
    (instantiate, call)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let mut config = Config::new();
    config.wasm_component_model(true);
    let engine = Engine::new(&config).unwrap();
    gateway(&engine);
    let js = path("TENANT_JS_WASM", "examples/tenant-js/tenant-js.wasm");
    let rust = path(
        "TENANT_RUST_WASM",
        "target/test-components/wasm32-wasip2/release/tenant_longer_grace.wasm",
    );
    let (js_instance, js_call) = tenant(&engine, "JavaScript", &js);
    let (rust_instance, rust_call) = tenant(&engine, "Rust", &rust);
    println!(
        "JavaScript / Rust: instance {:.1}x, call {:.1}x",
        js_instance.as_secs_f64() / rust_instance.as_secs_f64(),
        js_call.as_secs_f64() / rust_call.as_secs_f64()
    );
}
