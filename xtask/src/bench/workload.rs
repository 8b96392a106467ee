//! What the agent and runc benchmarks share: the long-running container
//! execs go into, and how a failed step's log is shown.

/// The container the exec figures run in.
pub(super) const SLEEPER: &str = "sleeper";

/// The last `n` lines of `text`: a log's end says why the last step failed.
pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\n", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }
}
