//! The remediation loop: where failures become issues, issues move through their lifecycle and fixes are dispatched.

pub mod gate;
pub mod store;
