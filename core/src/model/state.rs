//! The step and task state machines. Every state change the engine makes is one of the
//! edges listed here; the tables are tested so a new edge is a deliberate change.

use serde::{Deserialize, Serialize};

/// The life of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting on unfinished parents.
    Pending,
    /// Claimable once `ready_at` has passed (a retry sets a later `ready_at`).
    Ready,
    /// Held by a worker under a lease.
    Running,
    /// Runnable, but held by the engine until something outside arrives: a signal
    /// (`send_signal`), or its deadline (the sweep fails it then).
    Waiting,
    /// Finished with a result.
    Complete,
    /// Failed permanently or out of attempts; an operator may retry or resolve it.
    Error,
    /// The task was cancelled before the step finished.
    Cancelled,
    /// An operator marked it done; dependents proceed.
    ResolvedManually,
}

/// The life of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created; no step claimed yet.
    Pending,
    /// At least one step has been claimed.
    Running,
    /// Every step is complete or resolved.
    Complete,
    /// A step is in error and nothing else can run.
    Error,
    /// Cancelled by an operator.
    Cancelled,
}

macro_rules! state_strings {
    ($ty:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),* }
            }
            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$variant),)* _ => None }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

state_strings!(StepState {
    Pending => "pending",
    Ready => "ready",
    Running => "running",
    Waiting => "waiting",
    Complete => "complete",
    Error => "error",
    Cancelled => "cancelled",
    ResolvedManually => "resolved_manually",
});

state_strings!(TaskState {
    Pending => "pending",
    Running => "running",
    Complete => "complete",
    Error => "error",
    Cancelled => "cancelled",
});

impl StepState {
    /// Finished for the purpose of its children: they may proceed.
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Complete | StepState::ResolvedManually)
    }

    /// No further transition happens without an operator.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Complete | StepState::Cancelled | StepState::ResolvedManually
        )
    }

    /// The allowed edges of the step machine.
    pub fn can_become(self, to: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, to),
            (Pending, Ready)
                | (Ready, Running)
                | (Running, Complete)
                | (Running, Ready)
                | (Running, Error)
                | (Error, Ready)
                | (Ready, Waiting)
                // A step the engine runs itself (fan-out): expanded (it then waits on
                // its instances as on parents), empty or collected, or refused.
                | (Ready, Pending | Complete | Error)
                | (Waiting, Complete)
                | (Waiting, Error)
                | (
                    Pending | Ready | Running | Waiting | Error,
                    ResolvedManually
                )
                | (Pending | Ready | Running | Waiting | Error, Cancelled)
        )
    }
}

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Complete | TaskState::Cancelled)
    }

    /// The allowed edges of the task machine.
    pub fn can_become(self, to: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, to),
            (Pending, Running)
                | (Pending | Running, Complete)
                | (Pending | Running, Error)
                | (Error, Running)
                | (Error, Complete)
                | (Pending | Running | Error, Cancelled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_edges_table() {
        use StepState::*;
        let allowed = [
            (Pending, Ready),
            (Ready, Running),
            (Running, Complete),
            (Running, Ready),
            (Running, Error),
            (Error, Ready),
            (Ready, Waiting),
            (Ready, Pending),
            (Ready, Complete),
            (Ready, Error),
            (Waiting, Complete),
            (Waiting, Error),
            (Waiting, ResolvedManually),
            (Waiting, Cancelled),
            (Pending, ResolvedManually),
            (Ready, ResolvedManually),
            (Running, ResolvedManually),
            (Error, ResolvedManually),
            (Pending, Cancelled),
            (Ready, Cancelled),
            (Running, Cancelled),
            (Error, Cancelled),
        ];
        for &from in StepState::ALL {
            for &to in StepState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        for s in StepState::ALL.iter().filter(|s| s.is_terminal()) {
            assert!(StepState::ALL.iter().all(|&to| !s.can_become(to)), "{s}");
        }
    }

    #[test]
    fn task_edges_table() {
        use TaskState::*;
        let allowed = [
            (Pending, Running),
            (Pending, Complete),
            (Running, Complete),
            (Pending, Error),
            (Running, Error),
            (Error, Running),
            (Error, Complete),
            (Pending, Cancelled),
            (Running, Cancelled),
            (Error, Cancelled),
        ];
        for &from in TaskState::ALL {
            for &to in TaskState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn strings_round_trip() {
        for &s in StepState::ALL {
            assert_eq!(StepState::parse(s.as_str()), Some(s));
        }
        for &s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
        }
        assert_eq!(StepState::parse("done"), None);
    }
}
