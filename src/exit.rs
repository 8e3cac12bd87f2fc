//! How the process exits: one enum, documented in the README's exit-code table. A leaf: it names
//! nothing else of the crate, so every layer above may say how a command ended without knowing why.

/// Process exit codes (documented in the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(into = "i32", try_from = "i32")]
pub enum Exit {
    /// Everything asked for was done.
    Ok = 0,
    /// At least one conversation or job failed (the others completed), or a runtime error.
    Failed = 1,
    /// Bad config, bad arguments, or a missing API key.
    Config = 2,
    /// Another process owns the state directory.
    Locked = 3,
    /// A pipeline stopped on an account-level provider error (401, 402, account not connected, a
    /// rejected token refresh).
    Auth = 4,
    /// Stopped by a signal before finishing.
    Interrupted = 130,
}

impl Exit {
    /// The code as the process returns it.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The more serious of two outcomes, for a command made of several parts: an interruption over
    /// an account-level stop over a failure over success.
    pub fn worst(self, other: Exit) -> Exit {
        let rank = |e: Exit| match e {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Config => 2,
            Exit::Locked => 3,
            Exit::Auth => 4,
            Exit::Interrupted => 5,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for i32 {
    fn from(e: Exit) -> i32 {
        e.code()
    }
}

impl TryFrom<i32> for Exit {
    type Error = String;

    fn try_from(code: i32) -> Result<Exit, String> {
        [Exit::Ok, Exit::Failed, Exit::Config, Exit::Locked, Exit::Auth, Exit::Interrupted]
            .into_iter()
            .find(|e| e.code() == code)
            .ok_or_else(|| format!("unknown exit code {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_order_by_severity() {
        for e in [Exit::Ok, Exit::Failed, Exit::Config, Exit::Locked, Exit::Auth, Exit::Interrupted] {
            assert_eq!(Exit::try_from(e.code()), Ok(e));
        }
        assert!(Exit::try_from(7).is_err());
        assert_eq!(Exit::Ok.worst(Exit::Failed), Exit::Failed);
        assert_eq!(Exit::Auth.worst(Exit::Failed), Exit::Auth);
        assert_eq!(Exit::Failed.worst(Exit::Interrupted), Exit::Interrupted);
    }
}
