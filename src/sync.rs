//! The one place that names the synchronization primitives.
//!
//! Everything concurrent in kafkafs (the scheduler's shared state, the
//! applier's worker pool) takes its `Mutex`, `Condvar`, `Arc`, atomics and
//! `thread` from here. Under `RUSTFLAGS="--cfg loom"` they are loom's model
//! checked versions, so `cargo test --lib` under loom explores every
//! interleaving of the code that uses them.
//!
//! The API is the small common subset: `lock()` returns the guard (a
//! poisoned loom mutex is a test failure anyway), `Condvar::wait` takes the
//! guard by value and gives it back. Channels are crossbeam's outside loom
//! and, under loom, a small MPMC channel built on loom's mutex and condvar
//! with the same API subset (timed receives wait without a timeout, the
//! stricter model).

#[cfg(not(loom))]
mod imp {
    pub use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
    pub use std::sync::Arc;
    pub use std::thread;

    /// A held lock.
    pub type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    /// A mutual-exclusion lock.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(parking_lot::Mutex<T>);

    impl<T> Mutex<T> {
        /// A lock around `value`.
        pub fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }
        /// Waits for the lock.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    /// A condition variable.
    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }
        /// Waits for a notification (the lock is released meanwhile).
        pub fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }
        /// Waits for a notification or `timeout`.
        pub fn wait_timeout<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            self.0.wait_for(&mut guard, timeout);
            guard
        }
        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    pub use crossbeam_channel as channel;
}

// The same items as the documented ones above, on loom's primitives.
#[cfg(loom)]
#[allow(missing_docs)]
mod imp {
    pub use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
    pub use loom::sync::Arc;
    pub use loom::thread;

    pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            match self.0.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            }
        }
    }

    #[derive(Debug)]
    pub struct Condvar(loom::sync::Condvar);

    impl Default for Condvar {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Condvar {
        pub fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            match self.0.wait(guard) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            }
        }
        /// Loom has no time: a timed wait is a plain wait, which is the
        /// stricter model (the code must not rely on the timeout firing).
        pub fn wait_timeout<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            _timeout: std::time::Duration,
        ) -> MutexGuard<'a, T> {
            self.wait(guard)
        }
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// A multi-producer, multi-consumer channel on loom's primitives.
    pub mod channel {
        use super::{Arc, Condvar, Mutex};
        use std::collections::VecDeque;

        struct Chan<T> {
            queue: VecDeque<T>,
            cap: Option<usize>,
            senders: usize,
            receivers: usize,
        }

        struct Shared<T> {
            chan: Mutex<Chan<T>>,
            cv: Condvar,
        }

        /// The sending side.
        pub struct Sender<T>(Arc<Shared<T>>);
        /// The receiving side.
        pub struct Receiver<T>(Arc<Shared<T>>);

        /// The receivers are gone; the message comes back.
        #[derive(Debug)]
        pub struct SendError<T>(pub T);
        /// The senders are gone and the channel is empty.
        #[derive(Debug)]
        pub struct RecvError;
        #[derive(Debug, PartialEq, Eq)]
        pub enum RecvTimeoutError {
            Timeout,
            Disconnected,
        }
        #[derive(Debug, PartialEq, Eq)]
        pub enum TryRecvError {
            Empty,
            Disconnected,
        }

        fn new<T>(cap: Option<usize>) -> (Sender<T>, Receiver<T>) {
            let shared = Arc::new(Shared {
                chan: Mutex::new(Chan {
                    queue: VecDeque::new(),
                    cap,
                    senders: 1,
                    receivers: 1,
                }),
                cv: Condvar::new(),
            });
            (Sender(shared.clone()), Receiver(shared))
        }

        pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
            new(None)
        }

        pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
            new(Some(cap.max(1)))
        }

        impl<T> Sender<T> {
            pub fn send(&self, value: T) -> Result<(), SendError<T>> {
                let mut c = self.0.chan.lock();
                loop {
                    if c.receivers == 0 {
                        return Err(SendError(value));
                    }
                    if c.cap.is_none_or(|cap| c.queue.len() < cap) {
                        c.queue.push_back(value);
                        self.0.cv.notify_all();
                        return Ok(());
                    }
                    c = self.0.cv.wait(c);
                }
            }
        }

        impl<T> Clone for Sender<T> {
            fn clone(&self) -> Self {
                self.0.chan.lock().senders += 1;
                Sender(self.0.clone())
            }
        }

        impl<T> Drop for Sender<T> {
            fn drop(&mut self) {
                self.0.chan.lock().senders -= 1;
                self.0.cv.notify_all();
            }
        }

        impl<T> Receiver<T> {
            pub fn recv(&self) -> Result<T, RecvError> {
                let mut c = self.0.chan.lock();
                loop {
                    if let Some(v) = c.queue.pop_front() {
                        self.0.cv.notify_all();
                        return Ok(v);
                    }
                    if c.senders == 0 {
                        return Err(RecvError);
                    }
                    c = self.0.cv.wait(c);
                }
            }

            /// Loom has no time: waits like `recv`.
            pub fn recv_timeout(
                &self,
                _timeout: std::time::Duration,
            ) -> Result<T, RecvTimeoutError> {
                self.recv()
                    .map_err(|RecvError| RecvTimeoutError::Disconnected)
            }

            pub fn try_recv(&self) -> Result<T, TryRecvError> {
                let mut c = self.0.chan.lock();
                match c.queue.pop_front() {
                    Some(v) => {
                        self.0.cv.notify_all();
                        Ok(v)
                    }
                    None if c.senders == 0 => Err(TryRecvError::Disconnected),
                    None => Err(TryRecvError::Empty),
                }
            }

            pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
                std::iter::from_fn(move || self.recv().ok())
            }
        }

        impl<T> Clone for Receiver<T> {
            fn clone(&self) -> Self {
                self.0.chan.lock().receivers += 1;
                Receiver(self.0.clone())
            }
        }

        impl<T> Drop for Receiver<T> {
            fn drop(&mut self) {
                self.0.chan.lock().receivers -= 1;
                self.0.cv.notify_all();
            }
        }
    }
}

pub use imp::*;

/// Runs a loom model over every interleaving up to a preemption bound of 3
/// (the usual loom practice: bugs needing more preemptions are rare;
/// override with LOOM_MAX_PREEMPTIONS).
#[cfg(all(test, loom))]
pub(crate) fn bounded_model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}
