//! The husk daemon tested from the outside, through the CRI, the way
//! kubelet and crictl use it: a tonic CRI client, the daemon as a child
//! process (killed with SIGKILL and restarted at will), and the steps of
//! the end-to-end suite that runs in the rig.

pub mod bench;
pub mod client;
pub mod critest;
pub mod daemon;
pub mod demo;
pub mod fixtures;
pub mod logs;
pub mod suite;
