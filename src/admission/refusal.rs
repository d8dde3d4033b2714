//! Why a handshake is refused, at whichever step: the local checks, the site's answer, or the
//! connection caps.

use std::fmt;

use crate::auth::AuthFailure;
use crate::caps::CapExceeded;
use crate::handshake::Rejection;

/// `Display` is the exact text the client gets in `connect_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The local checks refused it (site, namespace, origin, credential present).
    Rejected(Rejection),
    /// The site did not vouch for the credential (or could not be asked).
    Unauthorized(AuthFailure),
    /// A `realtime_max_connections_per_*` cap is full.
    TooManyConnections(CapExceeded),
}

impl Refusal {
    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.label(),
            Self::Unauthorized(failure) => failure.kind.label(),
            Self::TooManyConnections(cap) => cap.label(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(rejection) => rejection.fmt(f),
            Self::Unauthorized(failure) => write!(f, "Unauthorized: {}", failure.detail),
            Self::TooManyConnections(cap) => write!(
                f,
                "Too many connections for this {}",
                match cap {
                    CapExceeded::Site => "site",
                    CapExceeded::Ip => "address",
                    CapExceeded::User => "user",
                }
            ),
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Self::Rejected(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_frappes_and_ours() {
        let rejected = Refusal::from(Rejection::InvalidOrigin);
        assert_eq!(rejected.to_string(), "Invalid origin");
        assert_eq!(rejected.label(), "invalid_origin");
        let failure = AuthFailure::error("Frappe answered HTTP 500".into());
        assert_eq!(
            Refusal::Unauthorized(failure).to_string(),
            "Unauthorized: Frappe answered HTTP 500"
        );
        let full = Refusal::TooManyConnections(CapExceeded::User);
        assert_eq!(full.to_string(), "Too many connections for this user");
        assert_eq!(full.label(), "too_many_connections_user");
    }
}
