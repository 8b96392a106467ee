//! husk: a Kubernetes CRI runtime that runs every pod in its own KVM
//! microVM.
