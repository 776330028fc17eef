//! Single flight: at most one run of a job at a time, its outcome shared by every
//! caller that asked for it while it ran.
//!
//! Used by the client's token cache (one refresh for all callers) and by the
//! server's JWKS cache (one key fetch for all requests with an unknown `kid`).
//!
//! The job runs on a spawned task, so that dropping the caller that started it
//! (a cancelled request) does not cancel it. The slot is cleared by a guard inside
//! that task, after the job has returned (and so after it published its result)
//! and also if it panics or its runtime shuts down; a flight can never get stuck.
//!
//! Publication order: a job publishes its result (for example stores the new token)
//! *before* it returns. A caller first reads the published state, and only when
//! that is not good enough calls [`SingleFlight::join_or_start`], which checks
//! again under the slot lock through its `recheck` argument. So a caller either
//! sees the published result, or joins the flight that is about to publish it;
//! it never starts a second job for the same need.
//!
//! Nobody waits on a flight that nobody drives: a spawned job beats a heartbeat on
//! its runtime's timer. A waiter that sees no beat for [`STALL`] (the job's runtime
//! sits idle, as a current-thread runtime behind a blocking wrapper does between
//! calls) abandons the flight: the slot is freed and the waiter starts another on
//! its own runtime. The abandoned job may still finish later; its owner must treat
//! that outcome as stale (the cache publishes only newer tokens).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::sync::{Mutex, MutexGuard};

use futures_util::future::{self, BoxFuture, Either, FutureExt, Shared};

/// How often a spawned job beats.
const BEAT: Duration = Duration::from_secs(1);
/// A flight whose job has not beaten for this long is not driven by anyone.
pub(crate) const STALL: Duration = Duration::from_secs(5);

/// A job stopped without an outcome: it panicked or its runtime shut down.
#[derive(Clone, Debug)]
pub struct Aborted(pub String);

type Outcome<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

/// A handle on a running flight. Cloneable; [`Flight::wait`] yields the shared
/// outcome, or tells that the flight was abandoned.
pub(crate) struct Flight<T, E> {
    outcome: Outcome<T, E>,
    generation: u64,
    /// Beats of a job spawned on a runtime; `None` for a job its waiters drive.
    beats: Option<Arc<AtomicU64>>,
    slot: Arc<Mutex<Slot<T, E>>>,
}

impl<T, E> Clone for Flight<T, E> {
    fn clone(&self) -> Self {
        Flight {
            outcome: self.outcome.clone(),
            generation: self.generation,
            beats: self.beats.clone(),
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T, E> Flight<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The outcome; `None` when the job went [`STALL`] without a beat and this
    /// waiter abandoned the flight (the slot is free for another).
    pub(crate) async fn wait(self) -> Option<Result<T, E>> {
        let Some(beats) = self
            .beats
            .filter(|_| tokio::runtime::Handle::try_current().is_ok())
        else {
            return Some(self.outcome.await);
        };
        let mut outcome = self.outcome;
        loop {
            let before = beats.load(Ordering::Acquire);
            let stall = Box::pin(tokio::time::sleep(STALL));
            match future::select(outcome, stall).await {
                Either::Left((out, _)) => return Some(out),
                Either::Right(((), pending)) => outcome = pending,
            }
            if beats.load(Ordering::Acquire) == before {
                let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.generation == self.generation {
                    slot.running = None;
                }
                return None;
            }
        }
    }
}

/// Awaiting a flight directly waits for its outcome however long it takes (for jobs
/// that bound their own time, such as a key fetch with a timeout).
impl<T: Clone, E: Clone> Future for Flight<T, E> {
    type Output = Result<T, E>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.outcome.poll_unpin(cx)
    }
}

struct Slot<T, E> {
    generation: u64,
    running: Option<Flight<T, E>>,
}

/// See the module documentation.
pub(crate) struct SingleFlight<T, E> {
    slot: Arc<Mutex<Slot<T, E>>>,
}

impl<T, E> Default for SingleFlight<T, E> {
    fn default() -> Self {
        SingleFlight {
            slot: Arc::new(Mutex::new(Slot {
                generation: 0,
                running: None,
            })),
        }
    }
}

/// Either the recheck answered, or a flight to wait for.
pub(crate) enum Joined<T, E> {
    /// `recheck` found the need already met (or refused it) under the lock.
    Ready(Result<T, E>),
    /// A flight was running, or was started.
    Flight(Flight<T, E>),
}

impl<T, E> SingleFlight<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + From<Aborted> + 'static,
{
    /// Whether a flight is running now.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.lock().running.is_some()
    }

    /// Joins the running flight; if none runs, asks `recheck` (under the lock)
    /// whether a job is still needed and, if so, starts `job` on a spawned task.
    ///
    pub(crate) fn join_or_start<F, R>(&self, recheck: R, job: impl FnOnce() -> F) -> Joined<T, E>
    where
        R: FnOnce() -> Option<Result<T, E>>,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let mut slot = self.lock();
        if let Some(flight) = &slot.running {
            return Joined::Flight(flight.clone());
        }
        if let Some(ready) = recheck() {
            return Joined::Ready(ready);
        }
        slot.generation = slot.generation.wrapping_add(1);
        let guard = ClearOnDrop {
            slot: Arc::clone(&self.slot),
            generation: slot.generation,
        };
        let job = job();
        let (outcome, beats): (Outcome<T, E>, _) = match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let beats = Arc::new(AtomicU64::new(0));
                let beating = Arc::clone(&beats);
                let heartbeat = Box::pin(async move {
                    let mut interval = tokio::time::interval(BEAT);
                    loop {
                        interval.tick().await;
                        beating.fetch_add(1, Ordering::AcqRel);
                    }
                });
                let task = async move {
                    let out = match future::select(Box::pin(job), heartbeat).await {
                        Either::Left((out, _)) => out,
                        // The heartbeat never ends; it only runs beside the job.
                        Either::Right((_, job)) => job.await,
                    };
                    drop(guard);
                    out
                };
                let handle = handle.spawn(task);
                let outcome = async move {
                    match handle.await {
                        Ok(out) => out,
                        Err(e) if e.is_panic() => Err(E::from(Aborted("the job panicked".into()))),
                        Err(_) => Err(E::from(Aborted("the runtime shut down".into()))),
                    }
                };
                (outcome.boxed().shared(), Some(beats))
            }
            // Outside a runtime the waiters drive the job themselves.
            Err(_) => {
                let task = async move {
                    let out = job.await;
                    drop(guard);
                    out
                };
                (task.boxed().shared(), None)
            }
        };
        let flight = Flight {
            outcome,
            generation: slot.generation,
            beats,
            slot: Arc::clone(&self.slot),
        };
        slot.running = Some(flight.clone());
        Joined::Flight(flight)
    }

    fn lock(&self) -> MutexGuard<'_, Slot<T, E>> {
        // The lock guards only a few assignments; a panic cannot leave it torn.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct ClearOnDrop<T, E> {
    slot: Arc<Mutex<Slot<T, E>>>,
    generation: u64,
}

impl<T, E> Drop for ClearOnDrop<T, E> {
    fn drop(&mut self) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.generation == self.generation {
            slot.running = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    type Sf = SingleFlight<u32, crate::Error>;

    fn flight(j: Joined<u32, crate::Error>) -> Flight<u32, crate::Error> {
        match j {
            Joined::Flight(f) => f,
            Joined::Ready(_) => panic!("expected a flight"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let sf = Arc::new(Sf::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..100 {
            let sf = sf.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                let f = flight(sf.join_or_start(
                    || None,
                    || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok(7)
                    },
                ));
                f.wait().await.unwrap()
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!sf.is_running());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_starter_does_not_cancel_the_job() {
        let sf = Sf::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let f = flight(sf.join_or_start(
            || None,
            || async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(1)
            },
        ));
        drop(f);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(!sf.is_running());
    }

    #[tokio::test]
    async fn a_panicking_job_frees_the_slot_and_reports() {
        let sf = Sf::default();
        let f = flight(sf.join_or_start(
            || None,
            || async move {
                if true {
                    panic!("boom");
                }
                Ok(1)
            },
        ));
        assert!(matches!(
            f.wait().await.unwrap(),
            Err(crate::Error::Aborted(_))
        ));
        assert!(!sf.is_running());
        // The next caller starts a fresh job.
        let f = flight(sf.join_or_start(|| None, || async { Ok(2) }));
        assert_eq!(f.wait().await.unwrap().unwrap(), 2);
    }

    #[tokio::test]
    async fn recheck_answers_without_a_job() {
        let sf = Sf::default();
        match sf.join_or_start(|| Some(Ok(3)), || async { Ok(4) }) {
            Joined::Ready(r) => assert_eq!(r.unwrap(), 3),
            Joined::Flight(_) => panic!("recheck should have answered"),
        }
    }
}
