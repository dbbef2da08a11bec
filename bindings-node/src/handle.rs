//! `Handle`: one open `tasker_core::api::Tasker`. Opening, every operation and closing
//! return Promises; the work runs on the libuv pool (`call`) or on Tasker's runtime
//! (`callWaiting`), never on the JavaScript thread.

use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Result, Task};
use napi_derive::napi;
use tasker_core::api::Tasker;

use crate::errors::to_napi;

/// An open engine handle (see `Tasker` in `lib/client.js` for the documented API).
#[napi]
pub struct Handle {
    pub(crate) inner: Tasker,
}

/// Opens a handle on the libuv pool (opening connects and migrates the database).
pub struct Open {
    config: String,
}

impl Task for Open {
    type Output = Tasker;
    type JsValue = Handle;

    fn compute(&mut self) -> Result<Tasker> {
        Tasker::open(&self.config).map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, inner: Tasker) -> Result<Handle> {
        Ok(Handle { inner })
    }
}

/// One operation on the libuv pool, through the blocking `Tasker::call`.
pub struct Call {
    tasker: Tasker,
    op: String,
    request: String,
}

impl Task for Call {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<String> {
        self.tasker.call(&self.op, &self.request).map_err(to_napi)
    }

    fn resolve(&mut self, _env: Env, out: String) -> Result<String> {
        Ok(out)
    }
}

/// Closes a handle on the libuv pool: the last handle on a database closes its pool
/// and runtime, which waits for the connections to close.
pub struct Close {
    tasker: Tasker,
}

impl Task for Close {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        self.tasker.close();
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _out: ()) -> Result<()> {
        Ok(())
    }
}

/// Opens a handle from a JSON object of settings ("" for the defaults).
#[napi]
pub fn open(config_json: String) -> AsyncTask<Open> {
    AsyncTask::new(Open {
        config: config_json,
    })
}

#[napi]
impl Handle {
    /// Runs operation `op` with a JSON request text; resolves with the JSON response
    /// text. For operations that answer without waiting.
    #[napi]
    pub fn call(&self, op: String, request: String) -> AsyncTask<Call> {
        AsyncTask::new(Call {
            tasker: self.inner.clone(),
            op,
            request,
        })
    }

    /// Like `call`, awaited on Tasker's own runtime instead of a libuv pool thread: for
    /// operations that may wait (`worker_next`, `events` with `wait_ms`).
    #[napi]
    pub async fn call_waiting(&self, op: String, request: String) -> Result<String> {
        self.inner.call_async(&op, &request).await.map_err(to_napi)
    }

    /// `ping`, which core answers from memory without the database or any wait, run
    /// on the calling thread; returns the JSON response text.
    #[napi]
    pub fn ping(&self) -> Result<String> {
        self.inner.call("ping", "").map_err(to_napi)
    }

    /// Closes the handle (idempotent); later calls reject with a `closed` error.
    #[napi]
    pub fn close(&self) -> AsyncTask<Close> {
        AsyncTask::new(Close {
            tasker: self.inner.clone(),
        })
    }

    /// True once `close()` was called.
    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The engine's lease length in milliseconds (the `lease_ms` setting).
    #[napi(getter)]
    pub fn lease_ms(&self) -> f64 {
        self.inner.config().lease_ms as f64
    }
}
