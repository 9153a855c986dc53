//! The policy engine: one long-lived wasmtime `Engine` with the pooling
//! allocator and an epoch ticker, and loaded policies ready to instantiate.
//!
//! The model is Kubewarden's policy-server: compile once, keep an immutable
//! `Arc`-shared pre-instantiated component, and give every SMTP session a fresh
//! `Store` with its own time and memory budget, so no state and no failure
//! crosses from one session (or tenant) to another.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use super::bindings::{AttributionPolicyPre, guest};
use super::cache::{ComponentCache, Provenance};
use super::store::{SessionState, describe_error_with};
use crate::directory::Directory;

/// The default policy component, compiled from `policy-guest` by the build script.
pub static DEFAULT_POLICY: &[u8] = include_bytes!(env!("ATTRELAY_DEFAULT_POLICY"));

/// How often the engine's epoch advances; the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Budgets every policy instance gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Wall-clock budget of one call into the policy (instantiation included).
    pub call_timeout: Duration,
    /// Linear memory one instance may use, in bytes.
    pub memory_limit: usize,
    /// Instances alive at once (the pooling allocator is sized for them);
    /// beyond it, new sessions get a policy failure (451) until one ends.
    pub max_instances: u32,
}

/// A policy call's budget, by default (`[policy] timeout_ms`).
pub const DEFAULT_TIMEOUT_MS: u64 = 200;
/// An instance's memory, by default (`[policy] memory_limit_mib`).
pub const DEFAULT_MEMORY_MIB: u64 = 32;
/// Instances alive at once, by default (`[policy] max_instances`).
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            call_timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            memory_limit: (DEFAULT_MEMORY_MIB * 1024 * 1024) as usize,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot create the WebAssembly engine: {0:#}")]
    Engine(anyhow::Error),
    #[error("{origin}: cannot read the component: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}: not a valid WebAssembly component: {detail:#}")]
    Compile {
        origin: String,
        detail: anyhow::Error,
    },
    #[error("{origin}: the component does not implement the {} world: {detail:#}", world.name())]
    Link {
        origin: String,
        /// The world it was linked against.
        world: World,
        detail: anyhow::Error,
    },
    #[error("{origin}: the policy refused its settings: {message}")]
    Settings { origin: String, message: String },
    #[error("{origin}: the policy failed while starting: {message}")]
    Start { origin: String, message: String },
    #[error("{origin}: {message}")]
    Budget { origin: String, message: String },
}

/// Where a policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The default policy embedded in the binary.
    Embedded,
    /// A component file.
    File(PathBuf),
}

impl PolicySource {
    pub fn from_option(path: Option<&Path>) -> PolicySource {
        path.map(|p| PolicySource::File(p.to_path_buf()))
            .unwrap_or(PolicySource::Embedded)
    }

    pub fn describe(&self) -> String {
        match self {
            PolicySource::Embedded => "<embedded default policy>".to_string(),
            PolicySource::File(p) => p.display().to_string(),
        }
    }
}

struct EngineInner {
    engine: Engine,
    linker: Linker<SessionState>,
    /// Linker for tenant policies (`tenant-rules` world).
    tenant_linker: Linker<SessionState>,
    limits: EngineLimits,
    stop: Arc<AtomicBool>,
    cache: ComponentCache,
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The shared engine. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

impl PolicyEngine {
    pub fn new(limits: EngineLimits) -> Result<PolicyEngine, PolicyError> {
        Self::build(limits, None).map_err(PolicyError::Engine)
    }

    /// An engine whose compiled components are also cached in `cache_dir`.
    pub fn with_cache(
        limits: EngineLimits,
        cache_dir: Option<PathBuf>,
    ) -> Result<PolicyEngine, PolicyError> {
        Self::build(limits, cache_dir).map_err(PolicyError::Engine)
    }

    fn build(limits: EngineLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<PolicyEngine> {
        let n = limits.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A wasip2 component from Rust has one core module with one memory, plus
        // small shim modules; leave room for a few more.
        pool.total_component_instances(n)
            .max_core_instances_per_component(16)
            .total_core_instances(n.saturating_mul(8))
            .max_memories_per_component(2)
            .total_memories(n.saturating_mul(2))
            .max_tables_per_component(4)
            .total_tables(n.saturating_mul(4))
            .max_memory_size(limits.memory_limit)
            // A session's instance is dropped at its end, and its slot reset
            // for the next: by `madvise` that is a system call, page faults
            // on the next use and, on a multi-core machine, a TLB shootdown
            // (an interrupt to every core) per session — measured at about
            // 6 % of the relay's time at one message per connection. Pages
            // the instance touched, up to 1 MiB (a typical policy's stack
            // and heap), are zeroed in place instead, found with Linux's
            // PAGEMAP_SCAN where the kernel has it (6.7+; before, the whole
            // 1 MiB is zeroed). At most 1 MiB per slot stays resident: the
            // slots of the most instances alive at once, plus the warm
            // slots the pool keeps (wasmtime's default, 100).
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        // Reserve only what an instance may use: with thousands of pool slots,
        // the default 4 GiB reservation per memory would claim terabytes of
        // address space. The cost is explicit bounds checks, negligible for
        // policies that run microseconds per call.
        let reservation = (limits.memory_limit as u64).next_multiple_of(65536);
        config
            .memory_reservation(reservation)
            .memory_guard_size(65536)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // A wasip2 guest imports WASI even when it uses none of it; every
        // store gets an empty, deny-all WasiCtx (no files, network or env).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| super::sandbox::forbid_waiting(&mut linker))
            .map_err(|e| anyhow::Error::from(e).context("linking WASI"))?;
        super::bindings::AttributionPolicy::add_to_linker::<
            _,
            wasmtime::component::HasSelf<SessionState>,
        >(&mut linker, |s| s)
        .map_err(|e| anyhow::Error::from(e).context("linking the directory interface"))?;
        let mut tenant_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut tenant_linker)
            .and_then(|()| super::sandbox::forbid_waiting(&mut tenant_linker))
            .map_err(|e| anyhow::Error::from(e).context("linking WASI"))?;
        super::bindings::tenant::TenantRules::add_to_linker::<
            _,
            wasmtime::component::HasSelf<SessionState>,
        >(&mut tenant_linker, |s| s)
        .map_err(|e| anyhow::Error::from(e).context("linking the tenant-directory interface"))?;

        let stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let ticker_stop = stop.clone();
        std::thread::Builder::new()
            .name("attrelay-epoch".into())
            .spawn(move || {
                while !ticker_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker")?;
        Ok(PolicyEngine {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                tenant_linker,
                limits,
                stop,
                cache: ComponentCache::new(cache_dir),
            }),
        })
    }

    pub fn limits(&self) -> EngineLimits {
        self.inner.limits
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn cache(&self) -> &ComponentCache {
        &self.inner.cache
    }

    /// Compiles (or finds in the cache) a component.
    pub(crate) fn component(
        &self,
        origin: &str,
        bytes: &[u8],
    ) -> Result<(Component, String, Provenance), PolicyError> {
        let sha256: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (component, provenance) = self
            .inner
            .cache
            .get_or_compile(&self.inner.engine, &sha256, bytes)
            .map_err(|detail| PolicyError::Compile {
                origin: origin.to_string(),
                detail,
            })?;
        Ok((component, sha256, provenance))
    }

    pub(crate) fn tenant_linker(&self) -> &Linker<SessionState> {
        &self.inner.tenant_linker
    }

    /// Epoch ticks for a budget of `timeout`.
    pub(crate) fn ticks_for(&self, timeout: Duration) -> u64 {
        timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1
    }

    /// Epoch ticks that make up one call's budget (rounded up, plus one tick
    /// because the current tick may be about to end).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        self.ticks_for(self.inner.limits.call_timeout)
    }

    /// Compiles and links a component, then checks that it instantiates and
    /// accepts `settings`. A component that fails any step is refused here,
    /// before it decides anything.
    pub fn load(
        &self,
        source: &PolicySource,
        settings: &[(String, String)],
    ) -> Result<LoadedPolicy, PolicyError> {
        let origin = source.describe();
        let bytes: std::borrow::Cow<'static, [u8]> = match source {
            PolicySource::Embedded => DEFAULT_POLICY.into(),
            PolicySource::File(p) => std::fs::read(p)
                .map_err(|e| PolicyError::Read {
                    origin: origin.clone(),
                    source: e,
                })?
                .into(),
        };
        self.load_bytes(&origin, &bytes, settings)
    }

    pub fn load_bytes(
        &self,
        origin: &str,
        bytes: &[u8],
        settings: &[(String, String)],
    ) -> Result<LoadedPolicy, PolicyError> {
        let (component, sha256, provenance) = self.component(origin, bytes)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .and_then(AttributionPolicyPre::new)
            .map_err(link_error(origin, World::AttributionPolicy))?;
        let policy = LoadedPolicy {
            inner: Arc::new(LoadedInner {
                engine: self.clone(),
                pre,
                settings: wit_settings(settings),
                origin: origin.to_string(),
                sha256,
                provenance,
            }),
        };
        // Probe: instantiate and configure once, so that bad settings and a
        // component that traps at start are refused at load time.
        let mut store = policy.new_store(Arc::new(Directory::default()), 0);
        store.set_epoch_deadline(self.deadline_ticks());
        match policy.instantiate(&mut store) {
            Ok(_) => Ok(policy),
            Err(StartError::Settings(message)) => Err(PolicyError::Settings {
                origin: origin.to_string(),
                message,
            }),
            Err(StartError::Failed(message)) => Err(PolicyError::Start {
                origin: origin.to_string(),
                message,
            }),
        }
    }
}

/// The error of a component that does not implement `world`, the one it
/// is loaded for.
pub(crate) fn link_error(
    origin: &str,
    world: World,
) -> impl Fn(wasmtime::Error) -> PolicyError + '_ {
    move |e| PolicyError::Link {
        origin: origin.to_string(),
        world,
        detail: e.into(),
    }
}

/// The worlds of `wit/policy.wit` a component can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// A base policy: exports `policy`, imports `directory`.
    AttributionPolicy,
    /// A tenant's own rules: exports `tenant-policy`, imports `tenant-directory`.
    TenantRules,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::AttributionPolicy => "attrelay:policy/attribution-policy",
            World::TenantRules => "attrelay:policy/tenant-rules",
        }
    }

    /// The interface the world exports, as a component names it.
    fn export(self) -> &'static str {
        match self {
            World::AttributionPolicy => "attrelay:policy/policy@0.1.0",
            World::TenantRules => "attrelay:policy/tenant-policy@0.1.0",
        }
    }
}

impl PolicyEngine {
    /// The world the component `bytes` implements, told by what it exports
    /// (`None`: neither interface). Linking still decides whether it
    /// implements it whole. A component exporting both is refused: it
    /// could be deployed as either, and a validation of one would say
    /// nothing of the other.
    pub fn world_of(&self, origin: &str, bytes: &[u8]) -> Result<Option<World>, PolicyError> {
        let (component, _, _) = self.component(origin, bytes)?;
        let exports: Vec<String> = component
            .component_type()
            .exports(self.engine())
            .map(|(name, _)| name.to_string())
            .collect();
        let worlds: Vec<World> = [World::AttributionPolicy, World::TenantRules]
            .into_iter()
            .filter(|w| exports.iter().any(|e| e == w.export()))
            .collect();
        match worlds.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(PolicyError::Link {
                origin: origin.to_string(),
                world: World::AttributionPolicy,
                detail: anyhow::anyhow!(
                    "the component exports both attrelay:policy/policy and attrelay:policy/tenant-policy; a policy implements one world"
                ),
            }),
        }
    }
}

/// The operator's settings as `configure` receives them.
pub(crate) fn wit_settings(settings: &[(String, String)]) -> Vec<guest::Setting> {
    settings
        .iter()
        .map(|(k, v)| guest::Setting {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

struct LoadedInner {
    engine: PolicyEngine,
    pre: AttributionPolicyPre<SessionState>,
    settings: Vec<guest::Setting>,
    origin: String,
    sha256: String,
    provenance: Provenance,
}

/// A compiled, linked and validated policy with its settings. Cheap to clone;
/// sessions opened on it keep it alive, so a reload never pulls a policy from
/// under a session in flight.
#[derive(Clone)]
pub struct LoadedPolicy {
    inner: Arc<LoadedInner>,
}

pub(crate) enum StartError {
    Settings(String),
    Failed(String),
}

impl LoadedPolicy {
    /// Where the component came from.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// SHA-256 of the component bytes, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether it was compiled, or found in a cache.
    pub fn provenance(&self) -> Provenance {
        self.inner.provenance
    }

    pub fn engine(&self) -> &PolicyEngine {
        &self.inner.engine
    }

    /// A store for one instance deciding at `time` (see [`super::sandbox`]).
    pub(crate) fn new_store(&self, directory: Arc<Directory>, time: i64) -> Store<SessionState> {
        let limits = self.inner.engine.limits();
        super::store::new_store(
            self.inner.engine.engine(),
            directory,
            time,
            limits.memory_limit,
            None,
        )
    }

    /// Instantiates in `store` and calls `configure`, within the epoch
    /// deadline the caller set (one deadline for the whole start, so that
    /// each step cannot take a budget of its own).
    pub(crate) fn instantiate(
        &self,
        store: &mut Store<SessionState>,
    ) -> Result<super::bindings::AttributionPolicy, StartError> {
        let limits = self.inner.engine.limits();
        let describe = |store: &Store<SessionState>, e: wasmtime::Error| {
            describe_error_with(store, &e.into(), limits.call_timeout, limits.memory_limit)
        };
        let bindings = self
            .inner
            .pre
            .instantiate(&mut *store)
            .map_err(|e| StartError::Failed(describe(store, e)))?;
        match bindings
            .attrelay_policy_policy()
            .call_configure(&mut *store, &self.inner.settings)
        {
            Ok(Ok(())) => Ok(bindings),
            Ok(Err(message)) => Err(StartError::Settings(crate::verdict::one_line(&message))),
            Err(e) => Err(StartError::Failed(describe(store, e))),
        }
    }
}
