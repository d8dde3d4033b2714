//! How the calls to Frappe went since the start, for the operators' status page: the
//! outcomes counted, the last success and the last failure. Prometheus has the same counts
//! as series; this is the glance an operator takes without a dashboard.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::metrics::unix_now_ms;

/// The outcomes of a call that mean Frappe answered as it should (a denial is an answer).
const ANSWERED: [&str; 4] = ["ok", "allowed", "denied", "unauthorized"];

#[derive(Debug, Default)]
pub struct CallHealth(Mutex<Record>);

#[derive(Debug, Default)]
struct Record {
    outcomes: BTreeMap<&'static str, u64>,
    last_answer_ms: Option<u64>,
    last_failure: Option<Failure>,
}

/// The last call that did not get an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub at_ms: u64,
    pub endpoint: &'static str,
    /// `timeout`, `auth_error`, `no_callback_target`.
    pub outcome: &'static str,
}

/// What the status page shows.
#[derive(Debug, Clone, Serialize)]
pub struct CallHealthReport {
    /// Calls by outcome since the start.
    pub outcomes: BTreeMap<&'static str, u64>,
    pub last_answer_ms: Option<u64>,
    pub last_failure: Option<Failure>,
    /// Calls under way now, and how many may be (`realtime_callback_concurrency`).
    pub in_flight: usize,
    pub concurrency: usize,
    pub timeout_ms: u64,
}

impl CallHealth {
    pub fn record(&self, endpoint: &'static str, outcome: &'static str) {
        let mut record = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *record.outcomes.entry(outcome).or_default() += 1;
        if ANSWERED.contains(&outcome) {
            record.last_answer_ms = Some(unix_now_ms());
        } else {
            record.last_failure = Some(Failure {
                at_ms: unix_now_ms(),
                endpoint,
                outcome,
            });
        }
    }

    pub fn report(
        &self,
        in_flight: usize,
        concurrency: usize,
        timeout_ms: u64,
    ) -> CallHealthReport {
        let record = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        CallHealthReport {
            outcomes: record.outcomes.clone(),
            last_answer_ms: record.last_answer_ms,
            last_failure: record.last_failure.clone(),
            in_flight,
            concurrency,
            timeout_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_not_a_failure_and_a_timeout_is() {
        let health = CallHealth::default();
        health.record("get_user_info", "ok");
        health.record("get_user_info", "denied");
        assert!(health.report(0, 16, 5000).last_failure.is_none());
        health.record("has_permission", "timeout");
        let report = health.report(1, 16, 5000);
        let failure = report.last_failure.expect("the timeout");
        assert_eq!(
            (failure.endpoint, failure.outcome),
            ("has_permission", "timeout")
        );
        assert_eq!(report.outcomes.get("ok"), Some(&1));
        assert!(report.last_answer_ms.is_some());
    }
}
