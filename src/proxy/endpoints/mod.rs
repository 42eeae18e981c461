//! The gateway's own endpoints, which are not SP-API operations: each branches off the pipeline
//! after the accept phase and authenticates for itself.
//!
//! - [`token`]: `POST /auth/o2/token`, the drop-in LWA endpoint;
//! - [`reveal`]: `POST /v1/pii/reveal`, opening envelopes for roles granted the category;
//! - [`documents`]: the links a response's document URLs become, and `GET /v1/documents/{token}`;
//! - [`onboarding`]: `/oauth/start` and `/oauth/callback`, the website authorization workflow;
//! - [`rdt`]: `createRestrictedDataToken` answered with the gateway's own Restricted Data
//!   Token, and that token's checks when a tool presents it (after route, unlike the others).

pub mod documents;
pub mod onboarding;
pub mod rdt;
pub mod reveal;
pub mod token;
