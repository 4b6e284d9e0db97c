//! The remediation loop: where failures become issues, issues move through their lifecycle and fixes are dispatched.

pub mod dispatch;
pub mod gate;
pub mod lifecycle;
pub mod render;
pub mod sinks;
pub mod store;
pub mod triage;
