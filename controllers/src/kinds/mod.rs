//! One module per kind: each has a `reconcile` (the thin shell that reads
//! and writes the cluster) and pure functions that carry its logic.

pub mod capsule;
pub mod drill;
pub mod installation;
pub mod policy;
pub mod project;
