//! `Tasker::Native::Handle`: one open `tasker_core::api::Tasker`, and the two ways an
//! engine call leaves the GVL.
//!
//! Every engine call runs without the GVL, so other Ruby threads (handlers, a web
//! server's requests) run while the engine works. Code that runs without the GVL never
//! touches a Ruby object: the closures handed to [`without_gvl`] and
//! [`without_gvl_interruptible`] must be `Send`, which no Ruby value is.
//!
//! Calls that can wait (`wait_ms`, `grace_ms`) are *interruptible*: `Thread#raise`,
//! `Thread#kill`, a signal, or [`Cancel#cancel`](CancelToken) end the wait at once (the
//! engine finishes the operation on its own runtime and its answer is dropped).

use std::future::Future;
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use magnus::value::ReprValue;
use magnus::{Error, RString, Ruby, Value};
use tasker_core::api::Tasker;

use crate::convert::{decode, encode};
use crate::errors::to_rb;

// ---- leaving the GVL ----------------------------------------------------------------

struct Job<F, R> {
    func: Option<F>,
    out: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn run_job<F: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
    // SAFETY: `data` is the `Job` on the stack of `call_without_gvl`, alive until
    // rb_thread_call_without_gvl2 returns.
    let job = unsafe { &mut *(data as *mut Job<F, R>) };
    if let Some(f) = job.func.take() {
        // A panic must not unwind into Ruby's C frames: it is carried out and resumed.
        job.out = Some(catch_unwind(AssertUnwindSafe(f)));
    }
    std::ptr::null_mut()
}

/// Runs `f` without the GVL (`rb_thread_call_without_gvl2`). `ubf` is Ruby's unblocking
/// function for the call (None: the call cannot be interrupted, so it must be short).
fn call_without_gvl<F, R>(
    ruby: &Ruby,
    f: F,
    ubf: Option<unsafe extern "C" fn(*mut c_void)>,
    ubf_data: *mut c_void,
) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let mut job = Job {
        func: Some(f),
        out: None,
    };
    loop {
        // SAFETY: `run_job::<F, R>` matches `job`'s type; both pointers outlive the call.
        unsafe {
            rb_sys::rb_thread_call_without_gvl2(
                Some(run_job::<F, R>),
                &mut job as *mut Job<F, R> as *mut c_void,
                ubf,
                ubf_data,
            );
        }
        match job.out.take() {
            Some(Ok(r)) => return Ok(r),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            // An interrupt was pending, so `f` did not run: let Ruby handle it (it may
            // raise: Thread#raise, Thread#kill, a signal), then run `f`.
            None => ruby.thread_check_ints()?,
        }
    }
}

/// Runs a short engine call without the GVL; it cannot be interrupted.
pub fn without_gvl<F, R>(ruby: &Ruby, f: F) -> Result<R, Error>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    call_without_gvl(ruby, f, None, std::ptr::null_mut())
}

/// What a waiting call watches to end early.
struct Interrupt {
    flag: AtomicBool,
    thread: Thread,
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // SAFETY: `data` is the `Interrupt` on the stack of `without_gvl_interruptible`.
    let i = unsafe { &*(data as *const Interrupt) };
    i.flag.store(true, Ordering::Release);
    i.thread.unpark();
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` on this thread until it is ready, or until `stop()` is true after a
/// wake-up (then None).
fn block_until<F: Future>(fut: F, stop: impl Fn() -> bool) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        if stop() {
            return None;
        }
        std::thread::park();
    }
}

/// Runs an engine call that may wait, without the GVL. Returns None when the wait was
/// cut short by `token` or by a Ruby interrupt that raised nothing (`Thread#wakeup`);
/// an interrupt that raises (`Thread#raise`, `Thread#kill`, `Interrupt`) is returned as
/// that exception.
pub fn call_interruptible(
    ruby: &Ruby,
    tasker: &Tasker,
    op: &str,
    request: &str,
    token: Option<&CancelToken>,
) -> Result<Option<tasker_core::Result<String>>, Error> {
    let fut = tasker.call_async(op, request);
    let interrupt = Interrupt {
        flag: AtomicBool::new(false),
        thread: std::thread::current(),
    };
    let token = token.map(|t| t.inner.clone());
    if let Some(t) = &token {
        t.enter();
    }
    let ubf_data = &interrupt as *const Interrupt as *mut c_void;
    let out = {
        let interrupt = &interrupt;
        let token = token.as_deref();
        call_without_gvl(
            ruby,
            move || {
                block_until(fut, || {
                    interrupt.flag.load(Ordering::Acquire)
                        || token.is_some_and(|t| t.is_cancelled())
                })
            },
            Some(unblock),
            ubf_data,
        )
    };
    if let Some(t) = &token {
        t.leave();
    }
    let out = out?;
    if out.is_none() && interrupt.flag.load(Ordering::Acquire) {
        // Ruby asked the thread to stop waiting: run what it queued (it may raise).
        ruby.thread_check_ints()?;
    }
    Ok(out)
}

// ---- cancellation tokens --------------------------------------------------------------

pub struct TokenInner {
    cancelled: AtomicBool,
    /// The thread waiting in an interruptible call with this token, if any.
    waiter: Mutex<Option<Thread>>,
}

impl TokenInner {
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn enter(&self) {
        *self.waiter.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::thread::current());
    }

    fn leave(&self) {
        *self.waiter.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// `Tasker::Native::Cancel`: ends the interruptible calls made with it (from any
/// thread), now and later. The worker gives one to each of its threads.
#[magnus::wrap(class = "Tasker::Native::Cancel", free_immediately, size)]
pub struct CancelToken {
    inner: Arc<TokenInner>,
}

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken {
            inner: Arc::new(TokenInner {
                cancelled: AtomicBool::new(false),
                waiter: Mutex::new(None),
            }),
        }
    }

    /// Cancels: the waiting call (if any) returns nil at once, and so will later ones.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        if let Some(t) = self
            .inner
            .waiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
}

// ---- the handle -------------------------------------------------------------------------

/// An open engine handle (see `Tasker::Client` for the documented API).
#[magnus::wrap(class = "Tasker::Native::Handle", free_immediately, size)]
pub struct Handle {
    inner: Tasker,
}

fn rstring_arg(ruby: &Ruby, v: Value, what: &str) -> Result<String, Error> {
    match RString::from_value(v) {
        // SAFETY: copied at once.
        Some(s) => match unsafe { s.test_as_str() } {
            Some(t) => Ok(t.to_owned()),
            None => s.to_string(),
        },
        None => Err(Error::new(
            ruby.exception_type_error(),
            format!(
                "{what} must be a String, got {}",
                crate::convert::class_name(v)
            ),
        )),
    }
}

impl Handle {
    pub fn tasker(&self) -> &Tasker {
        &self.inner
    }

    /// Runs `op` without the GVL, mapping an engine error to its Ruby exception.
    pub fn run(&self, ruby: &Ruby, op: &str, request: &str) -> Result<String, Error> {
        let t = &self.inner;
        without_gvl(ruby, || t.call(op, request))?.map_err(|e| to_rb(ruby, e))
    }

    /// `Handle.open(config_json)`: opens a handle ("" for the defaults).
    pub fn open(ruby: &Ruby, config: Value) -> Result<Handle, Error> {
        let config = rstring_arg(ruby, config, "config")?;
        without_gvl(ruby, || Tasker::open(&config))?
            .map(|inner| Handle { inner })
            .map_err(|e| to_rb(ruby, e))
    }

    /// `#call(op, request_json) -> response_json`.
    pub fn call(ruby: &Ruby, rb_self: &Self, op: Value, request: Value) -> Result<RString, Error> {
        // The op and request are borrowed for the call only: copy out, then leave the GVL.
        let op = rstring_arg(ruby, op, "op")?;
        let request = rstring_arg(ruby, request, "request")?;
        let out = rb_self.run(ruby, &op, &request)?;
        Ok(ruby.str_new(&out))
    }

    /// `#call_obj(op, request)`: the request as Ruby data (nil: `{}`), the response as
    /// Ruby data.
    pub fn call_obj(
        ruby: &Ruby,
        rb_self: &Self,
        op: Value,
        request: Value,
    ) -> Result<Value, Error> {
        let op = rstring_arg(ruby, op, "op")?;
        let text = if request.is_nil() {
            String::new()
        } else {
            encode(ruby, request, "")?
        };
        let out = rb_self.run(ruby, &op, &text)?;
        decode(ruby, &out)
    }

    /// `#call_obj_wait(op, request, cancel)`: as `call_obj` for an operation that may
    /// wait; nil when the wait was cut short (by `cancel`, a `Tasker::Native::Cancel`
    /// or nil, or by `Thread#wakeup`).
    pub fn call_obj_wait(
        ruby: &Ruby,
        rb_self: &Self,
        op: Value,
        request: Value,
        cancel: Value,
    ) -> Result<Value, Error> {
        let op = rstring_arg(ruby, op, "op")?;
        let text = if request.is_nil() {
            String::new()
        } else {
            encode(ruby, request, "")?
        };
        let token: Option<&CancelToken> = if cancel.is_nil() {
            None
        } else {
            Some(magnus::TryConvert::try_convert(cancel)?)
        };
        match call_interruptible(ruby, &rb_self.inner, &op, &text, token)? {
            Some(out) => decode(ruby, &out.map_err(|e| to_rb(ruby, e))?),
            None => Ok(ruby.qnil().as_value()),
        }
    }

    /// `#close`: idempotent; later calls raise `Tasker::ClosedError`.
    pub fn close(ruby: &Ruby, rb_self: &Self) -> Result<(), Error> {
        let t = &rb_self.inner;
        without_gvl(ruby, || t.close())
    }

    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The engine's lease length in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        self.inner.config().lease_ms
    }

    /// How long one read of the event log waits for new events (`claim_poll_ms`).
    pub fn poll_ms(&self) -> u64 {
        self.inner.config().claim_poll_ms
    }
}

/// `Tasker::Native.to_json(value, what)`: Ruby data as JSON text (what names the value
/// in error messages).
pub fn to_json(ruby: &Ruby, value: Value, what: Value) -> Result<RString, Error> {
    let what = if what.is_nil() {
        "value".to_owned()
    } else {
        rstring_arg(ruby, what, "what")?
    };
    Ok(ruby.str_new(&encode(ruby, value, &what)?))
}

/// `Tasker::Native.from_json(text)`: JSON text as Ruby data.
pub fn from_json(ruby: &Ruby, text: Value) -> Result<Value, Error> {
    let text = rstring_arg(ruby, text, "text")?;
    decode(ruby, &text).map_err(|e| Error::new(ruby.exception_arg_error(), e.to_string()))
}
