//! Lifecycle event names. Events are the rows of the transitions table; the name is a
//! function of (entity, from, to, reason), decided here and nowhere else.

/// Why a transition happened, as recorded in the transitions table.
pub mod reason {
    pub const CREATED: &str = "created";
    pub const PARENTS_DONE: &str = "parents_done";
    pub const CLAIMED: &str = "claimed";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";
    pub const RETRY_SCHEDULED: &str = "retry_scheduled";
    pub const LEASE_EXPIRED: &str = "lease_expired";
    pub const TIMEOUT: &str = "timeout";
    pub const CANCELLED: &str = "cancelled";
    pub const OPERATOR_RETRY: &str = "operator_retry";
    pub const OPERATOR_RESOLVED: &str = "operator_resolved";
    pub const RELEASED: &str = "released";
    pub const FINALIZED: &str = "finalized";
    /// A delayed task came due: its root steps became ready.
    pub const DUE: &str = "due";
    /// The task's timeout (`timeout_s`) passed: the task failed, its steps stopped.
    pub const TASK_TIMEOUT: &str = "task_timeout";
    /// A runnable step the engine holds until a signal arrives (see `send_signal`).
    pub const WAITING: &str = "waiting";
    /// A waiting step completed by `send_signal` (its payload is the result).
    pub const SIGNALLED: &str = "signalled";
    /// A waiting step whose deadline passed without its signal.
    pub const SIGNAL_TIMEOUT: &str = "signal_timeout";
    /// A fan-out step expanded into its instances (it waits on them as on parents).
    pub const FANNED_OUT: &str = "fanned_out";
    /// A fan-out step whose items were missing, not a list, or too many.
    pub const FAN_OUT_FAILED: &str = "fan_out_failed";
    /// A running step whose handler asked to wait for the child tasks it started.
    pub const WAITING_FOR_CHILDREN: &str = "waiting_for_children";
    /// A step waiting for child tasks completed: every child completed.
    pub const CHILDREN_DONE: &str = "children_done";
    /// A step waiting for child tasks failed: a child ended `error` or `cancelled`.
    pub const CHILD_FAILED: &str = "child_failed";
    /// A step waiting for child tasks whose deadline passed first.
    pub const CHILDREN_TIMEOUT: &str = "children_timeout";
}

/// Every event name the engine emits.
pub const ALL: &[&str] = &[
    "task.created",
    "task.started",
    "task.completed",
    "task.failed",
    "task.cancelled",
    "task.resumed",
    "step.created",
    "step.ready",
    "step.started",
    "step.completed",
    "step.failed",
    "step.retry_scheduled",
    "step.lease_expired",
    "step.released",
    "step.timed_out",
    "step.retry_requested",
    "step.resolved_manually",
    "step.cancelled",
    "step.waiting",
    "step.signalled",
    "step.fanned_out",
];

/// The event name of a task transition.
pub fn task_event(from: Option<&str>, to: &str) -> &'static str {
    match (from, to) {
        (None, _) => "task.created",
        (_, "running") if from == Some("error") => "task.resumed",
        (_, "running") => "task.started",
        (_, "complete") => "task.completed",
        (_, "error") => "task.failed",
        (_, "cancelled") => "task.cancelled",
        _ => "task.changed",
    }
}

/// The event name of a step transition.
pub fn step_event(from: Option<&str>, to: &str, reason: Option<&str>) -> &'static str {
    match (from, to, reason) {
        (_, _, Some(reason::LEASE_EXPIRED)) => "step.lease_expired",
        (_, _, Some(reason::TIMEOUT)) => "step.timed_out",
        (None, "pending", _) => "step.created",
        (_, "pending", Some(reason::FANNED_OUT)) => "step.fanned_out",
        (_, "ready", Some(reason::OPERATOR_RETRY)) => "step.retry_requested",
        (_, "ready", Some(reason::RELEASED)) => "step.released",
        (Some("running"), "ready", _) => "step.retry_scheduled",
        (_, "ready", _) => "step.ready",
        (_, "running", _) => "step.started",
        (_, "waiting", _) => "step.waiting",
        (_, "complete", Some(reason::SIGNALLED)) => "step.signalled",
        (_, "complete", _) => "step.completed",
        (_, "error", _) => "step.failed",
        (_, "resolved_manually", _) => "step.resolved_manually",
        (_, "cancelled", _) => "step.cancelled",
        _ => "step.changed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let steps = [
            (None, "pending", Some("created"), "step.created"),
            (None, "ready", Some("created"), "step.ready"),
            (Some("pending"), "ready", Some("parents_done"), "step.ready"),
            (Some("ready"), "running", Some("claimed"), "step.started"),
            (
                Some("running"),
                "complete",
                Some("completed"),
                "step.completed",
            ),
            (
                Some("running"),
                "ready",
                Some("retry_scheduled"),
                "step.retry_scheduled",
            ),
            (Some("running"), "error", Some("failed"), "step.failed"),
            (Some("ready"), "waiting", Some("waiting"), "step.waiting"),
            (
                Some("ready"),
                "pending",
                Some("fanned_out"),
                "step.fanned_out",
            ),
            (
                Some("ready"),
                "complete",
                Some("fanned_out"),
                "step.completed",
            ),
            (
                Some("ready"),
                "error",
                Some("fan_out_failed"),
                "step.failed",
            ),
            (
                Some("waiting"),
                "complete",
                Some("signalled"),
                "step.signalled",
            ),
            (
                Some("waiting"),
                "error",
                Some("signal_timeout"),
                "step.failed",
            ),
            (
                Some("running"),
                "waiting",
                Some("waiting_for_children"),
                "step.waiting",
            ),
            (
                Some("waiting"),
                "complete",
                Some("children_done"),
                "step.completed",
            ),
            (
                Some("waiting"),
                "error",
                Some("child_failed"),
                "step.failed",
            ),
            (
                Some("waiting"),
                "error",
                Some("children_timeout"),
                "step.failed",
            ),
            (
                Some("running"),
                "ready",
                Some("lease_expired"),
                "step.lease_expired",
            ),
            (
                Some("running"),
                "error",
                Some("lease_expired"),
                "step.lease_expired",
            ),
            (Some("running"), "ready", Some("timeout"), "step.timed_out"),
            (Some("running"), "ready", Some("released"), "step.released"),
            (
                Some("error"),
                "ready",
                Some("operator_retry"),
                "step.retry_requested",
            ),
            (
                Some("error"),
                "resolved_manually",
                None,
                "step.resolved_manually",
            ),
            (
                Some("ready"),
                "cancelled",
                Some("cancelled"),
                "step.cancelled",
            ),
        ];
        for (from, to, reason, name) in steps {
            assert_eq!(
                step_event(from, to, reason),
                name,
                "{from:?}->{to} {reason:?}"
            );
            assert!(ALL.contains(&name));
        }
        let tasks = [
            (None, "pending", "task.created"),
            (Some("pending"), "running", "task.started"),
            (Some("error"), "running", "task.resumed"),
            (Some("running"), "complete", "task.completed"),
            (Some("running"), "error", "task.failed"),
            (Some("running"), "cancelled", "task.cancelled"),
        ];
        for (from, to, name) in tasks {
            assert_eq!(task_event(from, to), name);
            assert!(ALL.contains(&name));
        }
    }
}
