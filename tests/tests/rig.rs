//! The rig itself: a command's output and exit status come back, and a run
//! that overstays its deadline fails clearly.

use std::time::Duration;

use husk_tests::rig::{self, Collect, Mode, Options, Payload, RigError};

fn options(timeout_secs: u64) -> Options {
    Options {
        timeout: Duration::from_secs(timeout_secs),
        ..Default::default()
    }
}

#[test]
fn command_output_exit_status_and_written_files_come_back() {
    let payload = Payload::new().file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rig.rs"),
        "data/source.rs",
    );
    let back = std::env::temp_dir().join(format!("husk-rig-collect-{}", std::process::id()));
    std::fs::create_dir_all(&back).unwrap();
    std::fs::write(back.join("stale"), b"from an older run").unwrap();
    let options = Options {
        collect: Some(Collect {
            from: "out/report".into(),
            to: back.clone(),
        }),
        ..options(300)
    };
    let run = rig::run(
        &payload,
        "echo out-line; echo err-line >&2; head -c 12 \"$HUSK_RIG_DIR/data/source.rs\"; echo; \
         test -c /dev/kvm && echo kvm-present; \
         mkdir -p \"$HUSK_RIG_DIR/out/report/sub\" && echo written-in-rig > \"$HUSK_RIG_DIR/out/report/sub/r.txt\"; \
         exit 7",
        &options,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Collected although the command failed; the old content is replaced.
    let written = std::fs::read_to_string(back.join("sub/r.txt"));
    assert!(!back.join("stale").exists());
    let _ = std::fs::remove_dir_all(&back);
    assert_eq!(written.unwrap_or_default(), "written-in-rig\n");
    eprintln!("rig mode {:?}, start-up {:?}", run.mode, run.startup);
    assert_eq!(run.exit_code, 7, "output:\n{}", run.output);
    assert!(!run.success());
    let lines: Vec<&str> = run.output.lines().collect();
    assert!(lines.contains(&"out-line"), "{lines:?}");
    assert!(lines.contains(&"err-line"), "{lines:?}");
    assert!(
        lines.contains(&"//! The rig "),
        "payload file not readable: {lines:?}"
    );
    assert!(
        lines.contains(&"kvm-present"),
        "no /dev/kvm where the command ran: {lines:?}"
    );
    if run.mode == Mode::Nested {
        assert!(run.startup > Duration::ZERO);
    }
}

#[test]
fn a_command_past_its_deadline_is_a_timeout_error() {
    let err = rig::run(&Payload::new(), "sleep 600", &options(15)).unwrap_err();
    match err {
        RigError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_secs(15)),
        other => panic!("expected a timeout, got: {other}"),
    }
}

#[test]
fn payload_paths_must_stay_inside_the_payload() {
    let payload = Payload::new().file(file!(), "../escape.rs");
    let err = rig::run(&payload, "true", &options(60)).unwrap_err();
    assert!(err.to_string().contains("../escape.rs"), "{err}");
}

#[test]
fn a_silent_host_is_reported_unresponsive_before_the_deadline() {
    // Freeze the wrapper's heartbeat (every other child of the wrapper
    // shell but this command), then go silent: to the watcher that looks
    // exactly like a wedged L1.
    // (L1's busybox has no pgrep: parents are read from /proc.)
    let command = "for d in /proc/[0-9]*; do p=${d#/proc/}; \
                   [ \"$(cut -d' ' -f4 $d/stat 2>/dev/null)\" = \"$PPID\" ] && [ \"$p\" != \"$$\" ] \
                   && kill -STOP \"$p\"; done; echo frozen; sleep 600";
    let err = rig::run_once(&Payload::new(), command, &options(900)).unwrap_err();
    match err {
        RigError::Unresponsive { ref tail, .. } => assert!(tail.contains("frozen"), "{err}"),
        other => panic!("expected Unresponsive, got: {other}"),
    }
}
