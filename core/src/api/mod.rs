//! The one API every language uses: a [`Tasker`] handle and JSON operations.
//!
//! `Tasker::open(config_json)` gives a handle; `call(op, request_json)` runs one
//! operation and returns its JSON response, or an [`Error`] whose JSON form is
//! `{code, message, details}`. The operations are listed in `docs/api.md` and
//! dispatched in [`ops`]. Bindings (C, Python, Node, Ruby) wrap exactly this.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde_json::Value;

use crate::config::Config;
use crate::engine::{CloseSignal, CALLER};
use crate::error::{Error, ErrorCode, Result};

mod clock_ops;
pub mod host;
pub mod ops;
mod schedule_ops;
mod signal_ops;
mod subscription;
mod template_ops;
pub mod validate;
mod worker_ops;

pub use subscription::Subscription;

use host::EngineHost;

/// An open handle. Cloning shares it; [`Tasker::close`] closes it for every clone.
#[derive(Clone)]
pub struct Tasker {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    config: Config,
    host: RwLock<Option<Arc<EngineHost>>>,
    closed: AtomicBool,
    /// Fired by `close()`: ends this handle's calls that are waiting.
    signal: Arc<CloseSignal>,
}

impl std::fmt::Debug for Tasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasker")
            .field("database_url", &self.inner.config.database_url)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Tasker {
    /// Opens a handle. `config_json` is `""`, `"null"` or a JSON object of settings
    /// laid over `tasker.yaml` and `TASKER_*` variables (see `docs/configuration.md`).
    pub fn open(config_json: &str) -> Result<Tasker> {
        let overrides: Value = if config_json.trim().is_empty() {
            Value::Null
        } else {
            ops::parse_json(config_json)?
        };
        let config = Config::load(&overrides)?;
        Self::open_config(config)
    }

    /// Opens a handle over an already-built configuration.
    pub fn open_config(config: Config) -> Result<Tasker> {
        let host = host::acquire(&config)?;
        Ok(Tasker {
            inner: Arc::new(HandleInner {
                config,
                host: RwLock::new(Some(host)),
                closed: AtomicBool::new(false),
                signal: Arc::new(CloseSignal::default()),
            }),
        })
    }

    /// The host to run on. In a forked child the parent's host is unusable (its
    /// runtime threads did not survive the fork), so it is swapped for this process's
    /// own and leaked rather than dropped.
    fn host(&self) -> Result<Arc<EngineHost>> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::new(ErrorCode::Closed, "the handle is closed"));
        }
        {
            let guard = self.inner.host.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(h) if !h.is_foreign() => return Ok(h.clone()),
                Some(_) => {}
                None => return Err(Error::new(ErrorCode::Closed, "the handle is closed")),
            }
        }
        let mut guard = self.inner.host.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = guard.as_ref() {
            if !h.is_foreign() {
                return Ok(h.clone());
            }
        }
        tracing::info!("fork detected: opening the database again in the child process");
        let fresh = host::acquire(&self.inner.config)?;
        if let Some(old) = guard.replace(fresh.clone()) {
            std::mem::forget(old);
        }
        Ok(fresh)
    }

    /// Runs one operation, blocking the calling thread. Must not be called from inside
    /// an async runtime (use [`Tasker::call_async`] there).
    pub fn call(&self, op: &str, request: &str) -> Result<String> {
        let host = self.host()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                ErrorCode::InvalidState,
                "Tasker::call blocks and cannot run inside an async runtime; use call_async",
            ));
        }
        host.runtime.block_on(CALLER.scope(
            self.inner.signal.clone(),
            ops::dispatch(&host.engine, op, request),
        ))
    }

    /// Runs one operation on the handle's runtime and resolves with its response.
    /// Usable from any executor (the work runs on Tasker's own threads).
    pub fn call_async(
        &self,
        op: &str,
        request: &str,
    ) -> impl Future<Output = Result<String>> + Send + 'static {
        let prepared = self.host().map(|host| {
            let engine = host.engine.clone();
            let op = op.to_owned();
            let request = request.to_owned();
            let signal = self.inner.signal.clone();
            host.runtime.spawn(CALLER.scope(signal, async move {
                ops::dispatch(&engine, &op, &request).await
            }))
        });
        async move {
            match prepared {
                Ok(join) => join
                    .await
                    .map_err(|e| Error::internal(format!("operation task failed: {e}")))?,
                Err(e) => Err(e),
            }
        }
    }

    /// Delivers events to `callback` on a background thread, starting after cursor
    /// `since` and keeping only `types` when given. A slow callback delays only its own
    /// subscription: events are read from the durable log, never buffered by the engine.
    pub fn subscribe<F>(
        &self,
        since: i64,
        types: Option<Vec<String>>,
        callback: F,
    ) -> Result<Subscription>
    where
        F: FnMut(&Value) + Send + 'static,
    {
        Subscription::start(self.clone(), since, types, callback)
    }

    /// Closes the handle. Idempotent. The engine, pool and runtime are released when the
    /// last handle on the same database in this process closes.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.signal.close();
        let host = self
            .inner
            .host
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = host {
            if h.is_foreign() {
                std::mem::forget(h);
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

/// Numbered handles for the C ABI: a number never names two handles, so a closed or
/// made-up handle is reported as such instead of touching freed memory.
pub mod handles {
    use super::*;

    struct Table {
        next: AtomicU64,
        open: Mutex<HashMap<u64, Tasker>>,
    }

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(|| Table {
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn insert(t: Tasker) -> u64 {
        let t_ = table();
        let id = t_.next.fetch_add(1, Ordering::Relaxed);
        t_.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, t);
        id
    }

    pub fn get(id: u64) -> Result<Tasker> {
        let t_ = table();
        if let Some(t) = t_.open.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(t.clone());
        }
        if id != 0 && id < t_.next.load(Ordering::Relaxed) {
            Err(Error::new(
                ErrorCode::Closed,
                format!("handle {id} is closed"),
            ))
        } else {
            Err(Error::new(
                ErrorCode::NotFound,
                format!("handle {id} does not exist"),
            ))
        }
    }

    pub fn remove(id: u64) -> Result<()> {
        let t = table()
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match t {
            Some(t) => {
                t.close();
                Ok(())
            }
            None => get(id).map(|_| ()),
        }
    }
}
