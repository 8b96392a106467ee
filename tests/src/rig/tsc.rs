//! The host's TSC frequency, for L1's kernel command line.
//!
//! Under QEMU's software emulation the guest's TSC is the host's TSC. L1's
//! kernel normally calibrates it against the PIT, but on a busy host that
//! calibration fails now and then (the emulator gets descheduled mid-way);
//! microvm has no HPET or ACPI PM timer to fall back on, so the kernel marks
//! the TSC unusable and hangs early in boot (seen in about one boot in four
//! on the 2-core development machines). Measuring the frequency here and
//! passing `tsc_early_khz=` removes the calibration altogether.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The host TSC frequency in kHz, measured once per process.
pub fn host_tsc_khz() -> u64 {
    static KHZ: OnceLock<u64> = OnceLock::new();
    *KHZ.get_or_init(|| {
        // The median of a few short windows shrugs off one preempted window.
        let mut samples: Vec<u64> = (0..5).map(|_| measure(Duration::from_millis(20))).collect();
        samples.sort_unstable();
        samples[samples.len() / 2]
    })
}

fn measure(window: Duration) -> u64 {
    let start = Instant::now();
    let tsc_start = rdtsc();
    while start.elapsed() < window {
        std::hint::spin_loop();
    }
    let tsc_end = rdtsc();
    let nanos = start.elapsed().as_nanos().max(1);
    ((tsc_end - tsc_start) as u128 * 1_000_000 / nanos) as u64
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86_64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_frequency_is_plausible_and_stable() {
        let khz = host_tsc_khz();
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        let again = measure(Duration::from_millis(50));
        let drift = khz.abs_diff(again) as f64 / khz as f64;
        assert!(drift < 0.05, "{khz} vs {again} kHz");
    }
}
