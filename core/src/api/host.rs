//! One engine, one connection pool and one tokio runtime per database URL per process.
//! Handles share a host through reference counting; the last close releases it. A host
//! remembers the process it was made in, so a forked child gets its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::runtime::Runtime;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};

pub struct EngineHost {
    pub runtime: Runtime,
    pub engine: Arc<Engine>,
    pub pid: u32,
    pub url: String,
}

type Registry = Mutex<HashMap<(u32, String), Weak<EngineHost>>>;

fn registry() -> &'static Registry {
    static HOSTS: OnceLock<Registry> = OnceLock::new();
    HOSTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The host for this configuration's database (URL, and schema on PostgreSQL) in this
/// process, made on first use.
pub fn acquire(config: &Config) -> Result<Arc<EngineHost>> {
    let pid = std::process::id();
    let key = (pid, config.store_key());
    let mut hosts = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(host) = hosts.get(&key).and_then(Weak::upgrade) {
        if host.engine.config() != config {
            tracing::warn!(
                url = %config.database_url,
                "database already open in this process; sharing its engine and its configuration"
            );
        }
        return Ok(host);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tasker-rt")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot start the runtime: {e}"),
            )
        })?;
    let engine = runtime.block_on(Engine::open(config.clone()))?;
    runtime.spawn(engine.clone().sweep_forever());
    runtime.spawn(engine.clone().schedule_forever());
    runtime.spawn(crate::worker::keep_leases(engine.clone()));
    let host = Arc::new(EngineHost {
        runtime,
        engine,
        pid,
        url: config.database_url.clone(),
    });
    hosts.retain(|_, w| w.strong_count() > 0);
    hosts.insert(key, Arc::downgrade(&host));
    Ok(host)
}

impl EngineHost {
    /// True when this host was made in another process (we are a forked child).
    pub fn is_foreign(&self) -> bool {
        self.pid != std::process::id()
    }
}

impl Drop for EngineHost {
    fn drop(&mut self) {
        if self.is_foreign() {
            // Never reached: foreign hosts are leaked on purpose (see `handles`).
            return;
        }
        let engine = self.engine.clone();
        let close = async move { engine.close().await };
        let outcome = if tokio::runtime::Handle::try_current().is_ok() {
            // Dropped inside some runtime: block_on would panic, so close on a plain thread.
            let handle = self.runtime.handle().clone();
            std::thread::spawn(move || handle.block_on(close))
                .join()
                .unwrap_or_else(|_| Err(Error::internal("close panicked")))
        } else {
            self.runtime.block_on(close)
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, url = %self.url, "closing the store failed");
        }
    }
}
