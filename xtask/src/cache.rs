//! The build cache outside the clone (shared with the rig: see
//! `husk_tests::cache`).

pub use husk_tests::cache::{entry, key, write_atomic};
