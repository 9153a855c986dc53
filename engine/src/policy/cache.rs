//! Compiled components, cached in memory by SHA-256 and on disk as
//! precompiled artifacts keyed by SHA-256 and the engine's compatibility hash.
//!
//! Compiling a component with Cranelift takes seconds; deserializing a
//! precompiled one takes milliseconds. So a restart, or a reload of a
//! component already seen, never compiles again, and tenants that run the
//! same component share one compiled copy.
//!
//! Safety: `Component::deserialize_file` runs native code from the file. The
//! cache directory must be writable only by the relay's user, like the spool;
//! the file name carries the SHA-256 of the source component, and wasmtime
//! itself refuses artifacts from an incompatible engine or build.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained, for logs and the reload measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Already compiled in this process.
    Memory,
    /// Deserialized from the on-disk cache.
    Disk,
    /// Compiled now (and written to the cache when there is one).
    Compiled,
}

#[derive(Default)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
    memory: Mutex<HashMap<String, Component>>,
}

impl ComponentCache {
    pub fn new(dir: Option<PathBuf>) -> ComponentCache {
        ComponentCache {
            dir,
            memory: Mutex::default(),
        }
    }

    fn file(&self, engine: &Engine, sha256: &str) -> Option<PathBuf> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
    }

    /// The compiled component for `bytes` whose SHA-256 is `sha256`.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(Component, Provenance)> {
        if let Some(c) = self.memory.lock().expect("cache lock").get(sha256) {
            return Ok((c.clone(), Provenance::Memory));
        }
        let file = self.file(engine, sha256);
        if let Some(f) = file.as_ref().filter(|f| f.exists()) {
            // SAFETY: see the module documentation: the cache directory is
            // trusted like the spool, and wasmtime checks compatibility.
            match unsafe { Component::deserialize_file(engine, f) } {
                Ok(c) => {
                    self.remember(sha256, &c);
                    return Ok((c, Provenance::Disk));
                }
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "unusable cached component: compiling")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(f) = &file
            && let Err(e) = write_artifact(f, &component)
        {
            tracing::warn!(file = %f.display(), error = %e, "cannot write the component cache");
        }
        self.remember(sha256, &component);
        Ok((component, Provenance::Compiled))
    }

    fn remember(&self, sha256: &str, c: &Component) {
        self.memory
            .lock()
            .expect("cache lock")
            .insert(sha256.to_string(), c.clone());
    }

    /// Forgets in-memory copies (tests use it to measure disk loads).
    pub fn clear_memory(&self) {
        self.memory.lock().expect("cache lock").clear();
    }
}

fn write_artifact(path: &Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
