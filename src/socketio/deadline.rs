//! The connect timeout: a session with no connected namespace `connect_timeout` after it
//! opened is closed, whether it never sent CONNECT or every CONNECT was refused (Node's
//! `connectTimeout`, which checks the same thing at the same moment).
//!
//! Every session gets the timeout of the moment it opens, so deadlines arrive in the order
//! sessions open: one queue and one sweeping task serve them all, instead of a timer task per
//! session. Only a shorter timeout set while sessions wait puts a deadline before earlier
//! ones; it is inserted in its place. An entry holds the session weakly; a session that is
//! gone by its deadline costs only its entry until then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::transport::{CloseReason, Transport};

pub(crate) struct ConnectDeadlines {
    queue: Mutex<Queue>,
    /// Wakes the sweeper when a deadline goes before the one it sleeps until.
    earlier: Notify,
}

struct Queue {
    /// For the sessions that open from now on.
    timeout: Duration,
    /// Earliest deadline first.
    entries: VecDeque<(Instant, Weak<dyn Transport>)>,
    /// Whether the sweeping task runs; it ends when the queue empties.
    sweeping: bool,
}

impl ConnectDeadlines {
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Queue {
                timeout,
                entries: VecDeque::new(),
                sweeping: false,
            }),
            earlier: Notify::new(),
        })
    }

    /// The timeout of the sessions that open from now on.
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        self.queue().timeout = timeout;
    }

    /// Close `session` at its deadline unless it is connected to a namespace by then. Must be
    /// called on the runtime: the first entry starts the sweeping task.
    pub(crate) fn watch(self: &Arc<Self>, session: Weak<dyn Transport>) {
        let mut queue = self.queue();
        let deadline = Instant::now() + queue.timeout;
        let place = queue
            .entries
            .partition_point(|(other, _)| *other <= deadline);
        queue.entries.insert(place, (deadline, session));
        if !queue.sweeping {
            queue.sweeping = true;
            tokio::spawn(self.clone().sweep());
        } else if place == 0 {
            self.earlier.notify_one();
        }
    }

    async fn sweep(self: Arc<Self>) {
        while let Some(deadline) = self.next_deadline() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.earlier.notified() => continue,
            }
            for session in self.expired(Instant::now()) {
                enforce(&session);
            }
        }
    }

    /// The earliest deadline; `None` (and the sweeper stops) once there is none.
    fn next_deadline(&self) -> Option<Instant> {
        let mut queue = self.queue();
        let next = queue.entries.front().map(|(deadline, _)| *deadline);
        queue.sweeping = next.is_some();
        next
    }

    fn expired(&self, now: Instant) -> Vec<Weak<dyn Transport>> {
        let mut queue = self.queue();
        let due = queue
            .entries
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .count();
        queue
            .entries
            .drain(..due)
            .map(|(_, session)| session)
            .collect()
    }

    /// A panic elsewhere cannot leave the queue half-updated, so a poisoned lock is still
    /// good to use.
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn enforce(session: &Weak<dyn Transport>) {
    let Some(session) = session.upgrade() else {
        return;
    };
    if !session.state().has_connected_socket() {
        tracing::debug!(session = %session.id(), "no namespace joined in time; closing");
        session.close(CloseReason::ServerClose);
    }
}
