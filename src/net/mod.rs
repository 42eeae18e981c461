//! The HTTP plumbing below both the data plane (`proxy`) and the control plane (`auth`): the
//! pooled rustls client to SP-API ([`upstream`]) and the streaming body wrappers ([`body`]).
//! Knows nothing of tools, sellers or operations.

pub mod body;
pub mod upstream;
