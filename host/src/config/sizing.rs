//! How big a pod's microVM is: from the pod's limits, the configured
//! defaults and bounds.

use super::Config;

const MIB: u64 = 1024 * 1024;

impl Config {
    /// Guest memory for a pod, in MiB.
    ///
    /// `pod_limit_bytes` is the sum of the containers' memory limits when
    /// every container has one. With a limit the VM gets the limit rounded
    /// up to whole MiB plus `vm.overhead_memory_mib` (a pod limited to
    /// 100 MiB + 1 byte gets 101 MiB + overhead), so the containers can
    /// use all of it besides the guest's own needs; this may be less than
    /// the default, so small pods stay small. Without a limit (`None` or
    /// 0) it gets `vm.default_memory_mib`. Either way at most
    /// `vm.max_memory_mib`.
    pub fn vm_memory_mib(&self, pod_limit_bytes: Option<u64>) -> u64 {
        let wanted = match pod_limit_bytes {
            Some(bytes) if bytes > 0 => bytes
                .div_ceil(MIB)
                .saturating_add(self.vm.overhead_memory_mib),
            _ => self.vm.default_memory_mib,
        };
        wanted.min(self.vm.max_memory_mib)
    }

    /// vCPUs for a pod with CFS `cpu_quota` per `cpu_period` (both in µs):
    /// enough whole CPUs to spend the quota, `ceil(quota / period)`.
    /// Without a limit (either value 0 or negative) `vm.default_vcpus`.
    /// Always within `1..=vm.max_vcpus`.
    pub fn vm_vcpus(&self, cpu_quota: i64, cpu_period: i64) -> u8 {
        let max = self.vm.max_vcpus.max(1);
        if cpu_quota <= 0 || cpu_period <= 0 {
            return self.vm.default_vcpus.clamp(1, max);
        }
        let cpus = cpu_quota.unsigned_abs().div_ceil(cpu_period.unsigned_abs());
        u8::try_from(cpus).unwrap_or(u8::MAX).clamp(1, max)
    }
}
