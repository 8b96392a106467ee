//! The last lines of a VM's logs (husk-vmm's stderr, the guest console),
//! for the errors and statuses that say how a VM ended. Both files are
//! written by things we do not trust to be small, so only their end is
//! read.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::VmLayout;

/// How much of a log's end is read at most.
const TAIL_BYTES: u64 = 16 * 1024;
/// How many lines of it are shown.
pub const TAIL_LINES: usize = 10;

/// The last `lines` lines of the file at `path`; empty when it is missing
/// or empty.
pub fn last_lines(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::with_capacity((len - start) as usize);
    if file.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if start > 0 && !all.is_empty() {
        // The first line was cut by the window.
        all.remove(0);
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What husk-vmm and the guest said last, as one text for an error.
pub fn vm_logs(layout: &VmLayout) -> String {
    let shown = |text: String| {
        if text.is_empty() {
            "(nothing)".to_string()
        } else {
            text
        }
    };
    format!(
        "husk-vmm said:\n{}\nguest console:\n{}",
        shown(last_lines(&layout.vmm_log(), TAIL_LINES)),
        shown(last_lines(&layout.console_log(), TAIL_LINES))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_a_small_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        assert_eq!(last_lines(&path, 3), "");
        let text: String = (1..=20).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(last_lines(&path, 3), "line 18\nline 19\nline 20");
    }

    #[test]
    fn a_huge_log_is_read_only_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = "x".repeat(10 << 20);
        text.push_str("\nlast words\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(last_lines(&path, 1), "last words");
        // A single line longer than the window is dropped, not shown cut.
        std::fs::write(&path, "y".repeat(1 << 20)).unwrap();
        assert_eq!(last_lines(&path, 2), "");
    }

    #[test]
    fn vm_logs_says_nothing_when_nothing_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let layout = VmLayout::from_root(dir.path().to_owned());
        std::fs::write(layout.vmm_log(), "vmm: bad things\n").unwrap();
        assert_eq!(
            vm_logs(&layout),
            "husk-vmm said:\nvmm: bad things\nguest console:\n(nothing)"
        );
    }
}
