//! The spec's annotations: the container's own, plus the `io.kubernetes.cri.*`
//! keys containerd sets, which tools in the guest may read.

use std::collections::HashMap;

use super::SpecInput;

pub(super) const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub(super) const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub(super) const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub(super) const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub(super) const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// Ids the daemon assigns are not known here and are left out. Our keys
/// win over a container annotation of the same name, as in containerd.
pub(super) fn build(input: &SpecInput) -> HashMap<String, String> {
    let mut map = input.container.annotations.clone();
    map.insert(CONTAINER_TYPE.into(), "container".into());
    if let Some(meta) = &input.container.metadata {
        map.insert(CONTAINER_NAME.into(), meta.name.clone());
    }
    if let Some(meta) = &input.pod.metadata {
        map.insert(SANDBOX_NAME.into(), meta.name.clone());
        map.insert(SANDBOX_NAMESPACE.into(), meta.namespace.clone());
        map.insert(SANDBOX_UID.into(), meta.uid.clone());
    }
    map
}
