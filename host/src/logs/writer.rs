//! One container's log file: both streams, each with its own line buffer.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{format_timestamp, Stream};

/// The longest text one record carries. A line that grows to this without
/// a newline is written as a `P` record, so a program printing without
/// newlines cannot make the daemon buffer without bound. (containerd
/// uses the same 16 KiB.)
pub const MAX_LINE: usize = 16 * 1024;

/// Permissions of a new log file: kubelet reads it as root; the group may
/// be a log collector's.
const FILE_MODE: u32 = 0o640;

/// Writes a container's output to its CRI log file.
///
/// Every record is complete before it is written, and all the records of
/// one call go out in a single `write(2)` on an `O_APPEND` file, so a
/// reader following the file never sees a torn record. Bytes are passed
/// through as they are: invalid UTF-8 stays invalid UTF-8.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: File,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LogWriter {
    /// Opens (creating, mode 0640) `path` for appending. The parent folder
    /// must exist: it is kubelet's to create.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: open_append(path)?,
            stdout: Vec::new(),
            stderr: Vec::new(),
        })
    }

    /// The file this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs `data` from `stream`, stamped with the current time.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        self.write_at(stream, data, Utc::now())
    }

    /// Logs `data` from `stream` stamped `at`: each completed line becomes
    /// an `F` record, a line reaching [`MAX_LINE`] a `P` record, and the
    /// unfinished rest waits in the stream's buffer for more data.
    pub fn write_at(
        &mut self,
        stream: Stream,
        data: &[u8],
        at: DateTime<Utc>,
    ) -> std::io::Result<()> {
        let prefix = prefix(at, stream);
        let buffer = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            // Invariant: buffer.len() < MAX_LINE, so there is room.
            let room = MAX_LINE - buffer.len();
            let window = &rest[..rest.len().min(room)];
            if let Some(newline) = window.iter().position(|&b| b == b'\n') {
                push_record(&mut out, &prefix, b'F', buffer, &window[..newline]);
                rest = &rest[newline + 1..];
            } else if window.len() == room {
                push_record(&mut out, &prefix, b'P', buffer, window);
                rest = &rest[room..];
            } else {
                buffer.extend_from_slice(window);
                rest = &[];
            }
        }
        self.append(&out)
    }

    /// The container's output ended: writes what is left in either buffer
    /// as a `P` record (it never got its newline), stamped now.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.finish_at(Utc::now())
    }

    /// [`LogWriter::finish`] with an explicit time.
    pub fn finish_at(&mut self, at: DateTime<Utc>) -> std::io::Result<()> {
        let mut out = Vec::new();
        for (stream, buffer) in [
            (Stream::Stdout, &mut self.stdout),
            (Stream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                push_record(&mut out, &prefix(at, stream), b'P', buffer, &[]);
            }
        }
        self.append(&out)
    }

    /// CRI ReopenContainerLog: kubelet renamed the file to rotate it. Opens
    /// `path` afresh (creating it) and writes there from now on. Half-done
    /// lines stay buffered and land in the new file, where they end. On
    /// error the old file is still the one written.
    pub fn reopen(&mut self) -> std::io::Result<()> {
        let file = open_append(&self.path)?;
        self.file.flush()?;
        self.file = file;
        Ok(())
    }

    fn append(&mut self, records: &[u8]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.file.write_all(records)
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// `<timestamp> <stream> `, shared by the records of one call.
fn prefix(at: DateTime<Utc>, stream: Stream) -> Vec<u8> {
    format!("{} {} ", format_timestamp(at), stream).into_bytes()
}

/// Appends one record of `buffered` + `text` to `out` and empties
/// `buffered`.
fn push_record(out: &mut Vec<u8>, prefix: &[u8], tag: u8, buffered: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(prefix);
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(buffered);
    out.extend_from_slice(text);
    out.push(b'\n');
    buffered.clear();
}

#[cfg(test)]
mod tests;
