//! Reading CRI log files back.

use std::path::Path;

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub timestamp: String,
    pub stream: String,
    pub tag: String,
    pub text: String,
}

/// Parses `<RFC3339Nano> <stream> <P|F> <text>` lines; an error names the
/// first line that is not one.
pub fn parse(text: &str) -> anyhow::Result<Vec<LogRecord>> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(timestamp), Some(stream), Some(tag)) =
                (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("not a CRI log line: {line:?}");
            };
            let text = parts.next().unwrap_or("");
            anyhow::ensure!(
                timestamp.len() >= 20
                    && timestamp.ends_with('Z')
                    && timestamp.as_bytes()[10] == b'T',
                "bad timestamp in {line:?}"
            );
            anyhow::ensure!(
                stream == "stdout" || stream == "stderr",
                "bad stream in {line:?}"
            );
            anyhow::ensure!(tag == "P" || tag == "F", "bad tag in {line:?}");
            Ok(LogRecord {
                timestamp: timestamp.into(),
                stream: stream.into(),
                tag: tag.into(),
                text: text.into(),
            })
        })
        .collect()
}

pub fn read(path: &Path) -> anyhow::Result<Vec<LogRecord>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse(&text)
}

/// The full lines of `stream`, P records joined with what follows.
pub fn lines(records: &[LogRecord], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut partial = String::new();
    for record in records.iter().filter(|r| r.stream == stream) {
        partial.push_str(&record.text);
        if record.tag == "F" {
            out.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        out.push(partial);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_partials_join() {
        let text = "2026-11-23T17:12:00.1Z stdout P hel\n2026-11-23T17:12:00.2Z stderr F oops\n2026-11-23T17:12:00.3Z stdout F lo\n";
        let records = parse(text).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(lines(&records, "stdout"), vec!["hello"]);
        assert_eq!(lines(&records, "stderr"), vec!["oops"]);
        assert!(parse("garbage\n").is_err());
        assert!(parse("2026-11-23T17:12:00Z stdout X text\n").is_err());
    }
}
