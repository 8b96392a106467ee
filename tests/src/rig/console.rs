//! Reading the L1 host's serial console: the command's output, and the
//! marker line that carries its exit status back.

/// L1's init prints `HUSK-RIG-EXIT <status>` after the command ends.
pub const EXIT_MARKER: &str = "HUSK-RIG-EXIT ";

/// L1's init prints this just before it starts the command.
pub const START_MARKER: &str = "HUSK-RIG-START";
/// Printed every few seconds while the command runs, so a test host that
/// stops responding (a TCG or nested-KVM hang) is told apart from a quiet
/// command.
pub const HEARTBEAT_MARKER: &str = "HUSK-RIG-HEARTBEAT";

/// One console line, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Start,
    Heartbeat,
    Exit(i32),
    Output(&'a str),
}

/// Classifies one console line (without its line ending; a serial console
/// adds `\r`, which is dropped here).
pub fn classify(raw: &str) -> Line<'_> {
    let line = raw.trim_end_matches(['\r', '\n']);
    if line == START_MARKER {
        return Line::Start;
    }
    if line == HEARTBEAT_MARKER {
        return Line::Heartbeat;
    }
    if let Some(code) = line.strip_prefix(EXIT_MARKER) {
        if let Ok(code) = code.trim().parse() {
            return Line::Exit(code);
        }
    }
    Line::Output(line)
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A line of L1's own kernel log (`[  152.712813] watchdog: ...`). It says
/// nothing about whether the command still runs: a wedged L1 goes on
/// printing soft-lockup reports, so these lines are not signs of life.
pub fn is_kernel_log(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, _)) = rest.split_once("] ") else {
        return false;
    };
    let stamp = stamp.trim_start();
    !stamp.is_empty()
        && stamp.contains('.')
        && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_log_lines_are_told_apart() {
        assert!(is_kernel_log(
            "[  152.712813] watchdog: BUG: soft lockup - CPU#0 stuck for 26s!"
        ));
        assert!(is_kernel_log("[0.000000] Linux version 6.1\r"));
        assert!(!is_kernel_log("bench: serial pod 3: 2.37s"));
        assert!(!is_kernel_log("[x] done"));
        assert!(!is_kernel_log("[] empty"));
        assert!(!is_kernel_log("[12] no fraction"));
    }

    #[test]
    fn markers_are_recognised_with_serial_line_endings() {
        assert_eq!(classify("HUSK-RIG-START\r"), Line::Start);
        assert_eq!(classify("HUSK-RIG-HEARTBEAT\r"), Line::Heartbeat);
        assert_eq!(
            classify("x HUSK-RIG-HEARTBEAT"),
            Line::Output("x HUSK-RIG-HEARTBEAT")
        );
        assert_eq!(classify("HUSK-RIG-EXIT 0\r\n"), Line::Exit(0));
        assert_eq!(classify("HUSK-RIG-EXIT 137"), Line::Exit(137));
    }

    #[test]
    fn other_lines_are_output_without_carriage_returns() {
        assert_eq!(classify("hello\r"), Line::Output("hello"));
        assert_eq!(
            classify("HUSK-RIG-EXIT abc"),
            Line::Output("HUSK-RIG-EXIT abc")
        );
        assert_eq!(
            classify(" HUSK-RIG-EXIT 1"),
            Line::Output(" HUSK-RIG-EXIT 1")
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail("a", 5), "a");
    }
}
