//! The appointment lifecycle as pure rules:
//! SCHEDULED -> CONFIRMED -> CHECKED_IN -> IN_PROGRESS -> COMPLETED, with CANCELLED
//! before the visit starts and NO_SHOW for a patient who never arrived.

/// Where an appointment is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Scheduled,
    Confirmed,
    CheckedIn,
    InProgress,
    Completed,
    Cancelled,
    NoShow,
}

/// What a custom method asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Confirm,
    CheckIn,
    Start,
    Complete,
    Cancel,
    MarkNoShow,
    Reschedule,
}

impl Action {
    /// Whether a patient may take this step only until the clinic's change cut-off
    /// before the start (cancelling and moving; confirming is always welcome).
    pub fn has_patient_cutoff(self) -> bool {
        matches!(self, Self::Cancel | Self::Reschedule)
    }
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Scheduled,
        Status::Confirmed,
        Status::CheckedIn,
        Status::InProgress,
        Status::Completed,
        Status::Cancelled,
        Status::NoShow,
    ];

    /// The stored name (the seed's lower-case words).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Confirmed => "confirmed",
            Self::CheckedIn => "checked_in",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::NoShow => "no_show",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The states that hold their time.
    pub fn active() -> impl Iterator<Item = Status> {
        Self::ALL.into_iter().filter(|s| s.holds_slot())
    }
    /// Whether the appointment still holds its slot (for overlap checks).
    pub fn holds_slot(self) -> bool {
        matches!(
            self,
            Self::Scheduled | Self::Confirmed | Self::CheckedIn | Self::InProgress
        )
    }

    /// The status after `action`, or `None` if the action is not allowed from here
    /// (a FAILED_PRECONDITION for the caller).
    pub fn after(self, action: Action) -> Option<Self> {
        use Action as A;
        use Status as S;
        match (self, action) {
            (S::Scheduled, A::Confirm) => Some(S::Confirmed),
            (S::Scheduled | S::Confirmed, A::CheckIn) => Some(S::CheckedIn),
            (S::CheckedIn, A::Start) => Some(S::InProgress),
            (S::InProgress, A::Complete) => Some(S::Completed),
            (S::Scheduled | S::Confirmed | S::CheckedIn, A::Cancel) => Some(S::Cancelled),
            (S::Scheduled | S::Confirmed, A::MarkNoShow) => Some(S::NoShow),
            // Rescheduling puts a confirmed visit back to "scheduled": the new time
            // needs confirming again.
            (S::Scheduled | S::Confirmed, A::Reschedule) => Some(S::Scheduled),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 7] = Status::ALL;

    #[test]
    fn the_happy_path_runs_from_scheduled_to_completed() {
        let mut s = Status::Scheduled;
        for action in [
            Action::Confirm,
            Action::CheckIn,
            Action::Start,
            Action::Complete,
        ] {
            s = s.after(action).unwrap();
        }
        assert_eq!(s, Status::Completed);
    }

    #[test]
    fn final_states_accept_no_action() {
        let actions = [
            Action::Confirm,
            Action::CheckIn,
            Action::Start,
            Action::Complete,
            Action::Cancel,
            Action::MarkNoShow,
            Action::Reschedule,
        ];
        for s in [Status::Completed, Status::Cancelled, Status::NoShow] {
            assert!(actions.iter().all(|a| s.after(*a).is_none()), "{s:?} moved");
            assert!(!s.holds_slot());
        }
    }

    #[test]
    fn a_visit_in_progress_cannot_be_cancelled() {
        assert_eq!(Status::InProgress.after(Action::Cancel), None);
        assert_eq!(
            ALL.iter()
                .filter(|s| s.after(Action::Cancel).is_some())
                .count(),
            3
        );
    }
}
