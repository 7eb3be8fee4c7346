//! How quinn's drivers run: as tokio tasks, like quinn's own tokio runtime, except that a
//! writer can drive its connection itself, on its own thread, right after it wrote.
//!
//! quinn sends nothing from the caller of `SendStream::write`: the write queues the bytes and
//! wakes the connection's driver task, which encrypts them and calls `sendmsg`. When the writer
//! is not a tokio worker (an application loop in `#[tokio::main]`'s `block_on`), that wake is a
//! cross-thread hop: the task goes to the runtime's inject queue and a parked worker is woken
//! (futex or eventfd), ~12–25 µs of a round trip on a small machine, once per side.
//!
//! [`DriverRuntime`] is the [`quinn::Runtime`] of Hypha's QUIC endpoints. Every future quinn
//! spawns (the endpoint's driver, each connection's driver) is held in a [`Task`] that a tokio
//! task polls as usual; the waker quinn's code sees is the [`Task`]'s own. Inside
//! [`drive_inline`], a wake of a [`Task`] on the calling thread is not forwarded to its tokio
//! task: the [`Task`] is noted, and polled on this thread once the closure returns (quinn's
//! state lock is released by then). So the driver's `sendmsg` runs on the writer's thread and
//! no other thread wakes. If the tokio task is polling the driver at that moment, the inline
//! poll is skipped and the tokio task is woken instead (it polls again): no wake is lost.
//!
//! Everything else (the UDP socket, timers, the tasks) lives on the tokio runtime the endpoint
//! was created on, as with `quinn::TokioRuntime`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Wake, Waker};

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A [`quinn::Runtime`] on the current tokio runtime whose drivers [`drive_inline`] can poll
/// on the writer's thread.
#[derive(Debug)]
pub struct DriverRuntime {
    handle: tokio::runtime::Handle,
}

impl DriverRuntime {
    /// On the tokio runtime of the caller (an error outside one).
    pub fn current() -> std::io::Result<Arc<DriverRuntime>> {
        let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        Ok(Arc::new(DriverRuntime { handle }))
    }
}

impl quinn::Runtime for DriverRuntime {
    fn new_timer(&self, at: std::time::Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        // A driver polled inline may be on a thread outside the runtime: the timer belongs to
        // the endpoint's runtime all the same.
        let _in = self.handle.enter();
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        let task = Arc::new(Task {
            driver: Mutex::new(Some(future)),
            runner: Mutex::new(None),
        });
        self.handle.spawn(Runner(task));
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        let _in = self.handle.enter();
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }

    fn now(&self) -> std::time::Instant {
        quinn::TokioRuntime.now()
    }
}

/// A future quinn spawned, and the waker of the tokio task that polls it.
struct Task {
    /// `None` once it has completed.
    driver: Mutex<Option<Driver>>,
    runner: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Task {
    fn wake_runner(&self) {
        if let Some(w) = lock(&self.runner).as_ref() {
            w.wake_by_ref();
        }
    }

    /// Polls the driver once on this thread (after a deferred wake).
    fn poll_here(self: &Arc<Self>) {
        let mut driver = match self.driver.try_lock() {
            Ok(d) => d,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Its tokio task is polling it: make it poll once more.
            Err(TryLockError::WouldBlock) => return self.wake_runner(),
        };
        let Some(d) = driver.as_mut() else { return };
        let waker = Waker::from(self.clone());
        if d.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
            *driver = None;
            drop(driver);
            // Its tokio task finishes on its next poll.
            self.wake_runner();
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let deferred = DEFER.with(Cell::get)
            && WOKEN.with(|w| {
                let mut w = w.borrow_mut();
                if !w.iter().any(|t| Arc::ptr_eq(t, self)) {
                    w.push(self.clone());
                }
                true
            });
        if !deferred {
            self.wake_runner();
        }
    }
}

/// The tokio task of a [`Task`].
struct Runner(Arc<Task>);

impl Future for Runner {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut w = lock(&self.0.runner);
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        let mut driver = lock(&self.0.driver);
        let Some(d) = driver.as_mut() else {
            return Poll::Ready(());
        };
        let waker = Waker::from(self.0.clone());
        match d.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(()) => {
                *driver = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Runner {
    /// The tokio task is dropped (its runtime shuts down): so is the driver. The driver's own
    /// state holds the [`Task`]'s waker, a cycle that would otherwise keep both alive.
    fn drop(&mut self) {
        let driver = lock(&self.0.driver).take();
        drop(driver);
    }
}

thread_local! {
    /// Set inside [`drive_inline`].
    static DEFER: Cell<bool> = const { Cell::new(false) };
    /// Drivers woken inside [`drive_inline`], to poll when it ends.
    static WOKEN: RefCell<Vec<Arc<Task>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (a write to a QUIC stream of an endpoint made with [`DriverRuntime`]), then polls
/// on this thread every driver `f` woke: the connection's packets are sent from here, before
/// this returns, instead of by a task on another thread. Nested calls poll at the outermost.
pub fn drive_inline<R>(f: impl FnOnce() -> R) -> R {
    /// Ends the deferral, even if `f` panics.
    struct Outermost(bool);
    impl Drop for Outermost {
        fn drop(&mut self) {
            if self.0 {
                DEFER.with(|d| d.set(false));
                // `f` panicked before the drivers it woke were polled: their tasks poll them.
                if std::thread::panicking() {
                    for t in WOKEN.with(RefCell::take) {
                        t.wake_runner();
                    }
                }
            }
        }
    }
    let outermost = Outermost(!DEFER.with(|d| d.replace(true)));
    let r = f();
    if outermost.0 {
        drop(outermost);
        // Drivers polled here may wake others: those go to their tasks as usual.
        for t in WOKEN.with(RefCell::take) {
            t.poll_here();
        }
    }
    r
}
