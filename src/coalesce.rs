//! Single-flight: concurrent identical calls share one execution.
//!
//! After a realtime or nginx restart every tab reconnects within seconds (protocol §10 #17); the
//! tabs of one browser share a `sid`, so their handshakes ask Frappe the same question. The
//! first caller runs the call; callers arriving while it runs wait for its answer.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    pending: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Run `call` for `key`, or wait for the run already under way. If the running caller is
    /// cancelled, a waiting one takes over the call.
    pub async fn run<F: Future<Output = V>>(&self, key: K, call: impl FnOnce() -> F) -> V {
        let cell = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let value = cell.get_or_init(call).await.clone();
        let mut pending = self.lock();
        if pending.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            pending.remove(&key);
        }
        value
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_identical_calls_run_once_and_later_calls_run_again() {
        let flights = Arc::new(SingleFlight::<&str, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |flights: Arc<SingleFlight<&'static str, usize>>, runs: Arc<AtomicUsize>| async move {
            flights
                .run("sid", || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let answers =
            futures_util::future::join_all((0..10).map(|_| call(flights.clone(), runs.clone())))
                .await;
        assert_eq!(answers, vec![1; 10]);
        assert_eq!(call(flights.clone(), runs.clone()).await, 2);
        assert!(flights.lock().is_empty());
    }
}
