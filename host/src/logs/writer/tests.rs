use std::os::unix::fs::PermissionsExt;

use chrono::TimeZone;

use super::*;

const T: &str = "2026-11-23T17:12:00.5Z";

fn t() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 17, 12, 0).unwrap() + chrono::Duration::milliseconds(500)
}

fn t2() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 17, 12, 1).unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    writer: LogWriter,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let writer = LogWriter::open(&path).unwrap();
    Fixture {
        _dir: dir,
        path,
        writer,
    }
}

impl Fixture {
    fn out(&mut self, data: &[u8]) {
        self.writer.write_at(Stream::Stdout, data, t()).unwrap();
    }
    fn err(&mut self, data: &[u8]) {
        self.writer.write_at(Stream::Stderr, data, t()).unwrap();
    }
    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8(self.contents()).unwrap()
    }
}

#[test]
fn open_creates_the_file_0640_but_not_its_folder() {
    let f = fixture();
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
    // The umask may only take bits away.
    assert_eq!(mode & !0o640, 0, "{mode:o}");
    assert_eq!(f.writer.path(), f.path);
    let e = LogWriter::open(&f.path.parent().unwrap().join("no/such/0.log")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn open_appends_to_an_existing_file() {
    let f = fixture();
    std::fs::write(&f.path, b"old\n").unwrap();
    let mut w = LogWriter::open(&f.path).unwrap();
    w.write_at(Stream::Stdout, b"new\n", t()).unwrap();
    drop(w);
    assert_eq!(f.text(), format!("old\n{T} stdout F new\n"));
}

#[test]
fn a_complete_line_is_one_full_record() {
    let mut f = fixture();
    f.out(b"hello world\n");
    assert_eq!(f.text(), format!("{T} stdout F hello world\n"));
}

#[test]
fn several_lines_in_one_chunk() {
    let mut f = fixture();
    f.out(b"one\ntwo\n\nfour\nfive");
    assert_eq!(
        f.text(),
        format!("{T} stdout F one\n{T} stdout F two\n{T} stdout F \n{T} stdout F four\n")
    );
    f.out(b" and more\n");
    assert!(f.text().ends_with(&format!("{T} stdout F five and more\n")));
}

#[test]
fn crlf_keeps_the_carriage_return_as_text() {
    let mut f = fixture();
    f.out(b"dos line\r\n");
    assert_eq!(f.text(), format!("{T} stdout F dos line\r\n"));
}

#[test]
fn a_line_split_over_writes_waits_for_its_end() {
    let mut f = fixture();
    f.out(b"par");
    f.out(b"ti");
    assert_eq!(f.text(), "");
    f.writer.write_at(Stream::Stdout, b"al\n", t2()).unwrap();
    // Stamped when the line completed.
    assert_eq!(f.text(), "2026-11-23T17:12:01Z stdout F partial\n");
}

#[test]
fn a_long_line_is_split_into_partial_records() {
    let mut f = fixture();
    let mut line = vec![b'a'; MAX_LINE];
    line.extend(vec![b'b'; MAX_LINE]);
    line.extend(b"ccc\n");
    f.out(&line);
    let a = "a".repeat(MAX_LINE);
    let b = "b".repeat(MAX_LINE);
    assert_eq!(
        f.text(),
        format!("{T} stdout P {a}\n{T} stdout P {b}\n{T} stdout F ccc\n")
    );
}

#[test]
fn a_long_line_in_small_chunks_splits_at_the_same_place() {
    let mut f = fixture();
    for _ in 0..(MAX_LINE / 1000 + 1) {
        f.out(&[b'x'; 1000]);
    }
    f.out(b"\n");
    let rest = (MAX_LINE / 1000 + 1) * 1000 - MAX_LINE;
    assert_eq!(
        f.text(),
        format!(
            "{T} stdout P {}\n{T} stdout F {}\n",
            "x".repeat(MAX_LINE),
            "x".repeat(rest)
        )
    );
}

#[test]
fn a_line_of_exactly_max_line_ends_with_an_empty_full_record() {
    let mut f = fixture();
    let mut line = vec![b'z'; MAX_LINE];
    line.push(b'\n');
    f.out(&line);
    assert_eq!(
        f.text(),
        format!("{T} stdout P {}\n{T} stdout F \n", "z".repeat(MAX_LINE))
    );
}

#[test]
fn streams_have_their_own_buffers() {
    let mut f = fixture();
    f.out(b"out-1 ");
    f.err(b"err-1 ");
    f.out(b"out-2\n");
    f.err(b"err-2\nerr-3\n");
    assert_eq!(
        f.text(),
        format!("{T} stdout F out-1 out-2\n{T} stderr F err-1 err-2\n{T} stderr F err-3\n")
    );
}

#[test]
fn finish_writes_unterminated_tails_as_partial() {
    let mut f = fixture();
    f.out(b"no newline");
    f.err(b"also none");
    f.writer.finish_at(t2()).unwrap();
    assert_eq!(
        f.text(),
        "2026-11-23T17:12:01Z stdout P no newline\n2026-11-23T17:12:01Z stderr P also none\n"
    );
    // Nothing left: a second finish writes nothing.
    f.writer.finish().unwrap();
    assert_eq!(f.text().lines().count(), 2);
}

#[test]
fn invalid_utf8_passes_through() {
    let mut f = fixture();
    f.out(b"\xff\xfe bytes\n");
    let mut want = format!("{T} stdout F ").into_bytes();
    want.extend(b"\xff\xfe bytes\n");
    assert_eq!(f.contents(), want);
}

#[test]
fn reopen_after_rename_starts_a_new_file() {
    let mut f = fixture();
    f.out(b"before\nhalf ");
    let rotated = f.path.with_extension("log.1");
    std::fs::rename(&f.path, &rotated).unwrap();
    f.writer.reopen().unwrap();
    f.out(b"line\nafter\n");
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap(),
        format!("{T} stdout F before\n")
    );
    assert_eq!(
        f.text(),
        format!("{T} stdout F half line\n{T} stdout F after\n")
    );
}

#[test]
fn reopen_fails_without_the_folder_and_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("c");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("0.log");
    let mut w = LogWriter::open(&path).unwrap();
    let moved = dir.path().join("moved");
    std::fs::rename(&sub, &moved).unwrap();
    assert!(w.reopen().is_err());
    w.write_at(Stream::Stdout, b"still here\n", t()).unwrap();
    assert_eq!(
        std::fs::read_to_string(moved.join("0.log")).unwrap(),
        format!("{T} stdout F still here\n")
    );
}
