//! The synchronisation primitives of the token cache and the single flight: std
//! and arc-swap in a build, loom's instrumented ones under `--cfg tower_bearer_loom`,
//! so that the model checks in `tests/loom.rs` explore every interleaving of the
//! real code.

#[cfg(not(tower_bearer_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

#[cfg(not(tower_bearer_loom))]
pub(crate) type SwapOption<T> = arc_swap::ArcSwapOption<T>;

/// The cache's store gate (a logout and a refresh's save, one at a time): tokio's
/// async mutex in a build. Under loom a gate that lets everyone through: tokio's mutex
/// locks a std mutex loom cannot switch threads around (a model would deadlock for
/// real), and the models do not log out; the gate's own cases are tested against real
/// files and Redis (`tests/client_refresh.rs`, `tests/fleet_refresh.rs`).
#[cfg(not(tower_bearer_loom))]
pub(crate) type StoreGate = tokio::sync::Mutex<()>;

#[cfg(tower_bearer_loom)]
pub(crate) use self::model::StoreGate;

#[cfg(tower_bearer_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

#[cfg(tower_bearer_loom)]
pub(crate) use self::model::SwapOption;

#[cfg(tower_bearer_loom)]
mod model {
    use std::sync::Arc;

    /// See the build's `StoreGate`: here every `lock` passes at once.
    #[derive(Default)]
    pub(crate) struct StoreGate;

    impl StoreGate {
        pub(crate) fn new(_: ()) -> Self {
            StoreGate
        }

        pub(crate) async fn lock(&self) {}
    }

    /// The part of `ArcSwapOption`'s API the cache uses, over a loom lock: loads and
    /// stores become points where loom switches threads.
    pub(crate) struct SwapOption<T>(loom::sync::RwLock<Option<Arc<T>>>);

    /// What a load gives: the value as it was.
    pub(crate) struct Guard<T>(Option<Arc<T>>);

    impl<T> std::ops::Deref for Guard<T> {
        type Target = Option<Arc<T>>;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl<T> SwapOption<T> {
        pub(crate) fn new(value: Option<Arc<T>>) -> Self {
            SwapOption(loom::sync::RwLock::new(value))
        }

        pub(crate) fn load(&self) -> Guard<T> {
            Guard(self.0.read().unwrap().clone())
        }

        pub(crate) fn load_full(&self) -> Option<Arc<T>> {
            self.0.read().unwrap().clone()
        }

        pub(crate) fn store(&self, value: Option<Arc<T>>) {
            *self.0.write().unwrap() = value;
        }

        pub(crate) fn rcu(&self, f: impl Fn(&Option<Arc<T>>) -> Option<Arc<T>>) {
            let mut slot = self.0.write().unwrap();
            let new = f(&slot);
            *slot = new;
        }

        pub(crate) fn compare_and_swap(
            &self,
            current: &Option<Arc<T>>,
            new: Option<Arc<T>>,
        ) -> Option<Arc<T>> {
            let mut slot = self.0.write().unwrap();
            let same = match (&*slot, current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let previous = slot.clone();
            if same {
                *slot = new;
            }
            previous
        }
    }
}
