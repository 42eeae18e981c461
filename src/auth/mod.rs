//! Who is calling us, and the Amazon credentials we call with.
//!
//! **Invariant:** Amazon tokens are [`crate::secret::Secret`]s and leave the process only in the
//! upstream `x-amz-access-token` header. Callers never see them.

pub mod caller;
pub mod control_plane;
pub mod drop_in;
pub mod lwa;
pub mod onboarding;
pub mod rdt;
pub mod slots;
