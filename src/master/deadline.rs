//! Deadline timers: run an action at an instant unless disarmed first.
//!
//! A dispatcher thread applies its own call's record and writes its
//! write-ahead frame itself (no hand-off to another thread), so it may be
//! stuck in a syscall on a failing data-root when its call's journal
//! deadline passes. A timer armed around that work answers the caller
//! (EIO) at the deadline without the dispatcher. `Timers` is the pure
//! part (armed actions, ordered by instant); `Deadlines` runs one thread
//! over it.
//!
//! Arming does not wake the thread unless the new deadline comes before
//! the one it sleeps towards: every call's deadline is its arrival plus
//! the same journal timeout, so new deadlines are almost always the
//! latest, and the thread sleeps through them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sync::{Arc, Condvar, Mutex};

/// What a timer does when it expires.
pub type Action = Box<dyn FnOnce() + Send>;

/// Armed actions by instant (pure: no threads, no clock). Holds only
/// the timers armed now: a disarmed one is removed at once, so its size is
/// the number of calls being guarded, not the call rate times the timeout.
#[derive(Default)]
pub struct Timers {
    armed: BTreeMap<(Instant, u64), Action>,
    next_id: u64,
}

/// One armed timer's place in `Timers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(Instant, u64);

impl Timers {
    /// Arms `action` for `at`.
    pub fn arm(&mut self, at: Instant, action: Action) -> TimerId {
        self.next_id += 1;
        self.armed.insert((at, self.next_id), action);
        TimerId(at, self.next_id)
    }

    /// Disarms a timer; false if it already expired (its action was
    /// handed out) or was disarmed.
    pub fn disarm(&mut self, id: TimerId) -> bool {
        self.armed.remove(&(id.0, id.1)).is_some()
    }

    /// Hands out the actions due at `now`, earliest first.
    pub fn expire(&mut self, now: Instant) -> Vec<Action> {
        let mut due = Vec::new();
        while let Some(entry) = self.armed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    /// The earliest instant an armed timer expires at.
    pub fn earliest(&self) -> Option<Instant> {
        self.armed.keys().next().map(|&(at, _)| at)
    }

    /// Timers armed.
    pub fn len(&self) -> usize {
        self.armed.len()
    }

    /// No timer armed.
    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

struct State {
    timers: Timers,
    /// The instant the thread sleeps until (it is woken only for an
    /// earlier deadline).
    sleeping_until: Option<Instant>,
    stopping: bool,
}

struct Inner {
    state: Mutex<State>,
    cv: Condvar,
}

/// A thread running armed actions at their instants.
pub struct Deadlines {
    inner: Arc<Inner>,
}

/// An armed timer; `disarm` it when the work it guards is done.
pub struct Timer {
    inner: Arc<Inner>,
    id: TimerId,
}

/// How long the thread sleeps with nothing armed (it is woken by the
/// first arm).
const IDLE: Duration = Duration::from_secs(3600);

impl Deadlines {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Deadlines> {
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                timers: Timers::default(),
                sleeping_until: None,
                stopping: false,
            }),
            cv: Condvar::new(),
        });
        let run = inner.clone();
        std::thread::Builder::new()
            .name("kafkafs-deadlines".into())
            .spawn(move || run_timers(&run))?;
        Ok(Deadlines { inner })
    }

    /// Runs `action` at `at` unless the timer is disarmed first.
    pub fn arm(&self, at: Instant, action: Action) -> Timer {
        let mut st = self.inner.state.lock();
        let id = st.timers.arm(at, action);
        let wake = st.sleeping_until.is_none_or(|until| at < until);
        drop(st);
        if wake {
            self.inner.cv.notify_one();
        }
        Timer {
            inner: self.inner.clone(),
            id,
        }
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.inner.state.lock().stopping = true;
        self.inner.cv.notify_one();
    }
}

impl Timer {
    /// The guarded work is done; false if the action ran (or is running).
    pub fn disarm(self) -> bool {
        self.inner.state.lock().timers.disarm(self.id)
    }
}

fn run_timers(inner: &Inner) {
    let mut st = inner.state.lock();
    loop {
        if st.stopping {
            return;
        }
        let now = Instant::now();
        let due = st.timers.expire(now);
        if !due.is_empty() {
            drop(st);
            for action in due {
                action();
            }
            st = inner.state.lock();
            continue;
        }
        let until = st.timers.earliest().unwrap_or(now + IDLE);
        st.sleeping_until = Some(until);
        st = inner
            .cv
            .wait_timeout(st, until.saturating_duration_since(now));
        st.sleeping_until = None;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn timers_expire_in_order_and_disarmed_ones_never() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (tx, rx) = mpsc::channel();
        let mut timers = Timers::default();
        let arm = |timers: &mut Timers, ms: u64| {
            let tx = tx.clone();
            timers.arm(at(ms), Box::new(move || tx.send(ms).unwrap()))
        };
        arm(&mut timers, 30);
        let second = arm(&mut timers, 20);
        arm(&mut timers, 10);
        assert_eq!(timers.len(), 3);
        assert_eq!(timers.earliest(), Some(at(10)));
        assert!(timers.expire(at(5)).is_empty());
        for action in timers.expire(at(10)) {
            action();
        }
        assert!(timers.disarm(second));
        assert!(!timers.disarm(second), "disarmed twice");
        assert_eq!(timers.len(), 1, "a disarmed timer is gone at once");
        assert_eq!(
            timers.earliest(),
            Some(at(30)),
            "the disarmed one is skipped"
        );
        for action in timers.expire(at(100)) {
            action();
        }
        assert!(timers.is_empty());
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), vec![10, 30]);
    }

    #[test]
    fn the_thread_runs_an_action_at_its_deadline_unless_disarmed() {
        let deadlines = Deadlines::start().unwrap();
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let late = deadlines.arm(start + Duration::from_secs(600), Box::new(|| {}));
        // Armed after a later one: the sleeping thread must wake for it.
        let tx2 = tx.clone();
        let soon = deadlines.arm(
            start + Duration::from_millis(50),
            Box::new(move || tx2.send("soon").unwrap()),
        );
        let disarmed = deadlines.arm(
            start + Duration::from_millis(20),
            Box::new(move || tx.send("disarmed").unwrap()),
        );
        assert!(disarmed.disarm());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok("soon"));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(!soon.disarm(), "it ran");
        assert!(late.disarm());
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
