//! husk-vmm: one KVM microVM per pod, on the rust-vmm crates.
//!
//! Rooms: `config` (what the user asked for), `arch` (x86_64 boot
//! structures), `boot` (loading kernel, initrd, command line), `vstate`
//! (KVM VM and vCPUs), `bus` + `legacy` (port-I/O devices), `seccomp` (the
//! process's syscall filter), virtio devices
//! in their own crates under `vmm/devices/`, and `builder` which wires it
//! all together and runs the event loop.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod bus;
pub mod config;
pub mod legacy;
pub mod seccomp;
pub mod vstate;
