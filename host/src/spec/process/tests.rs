use k8s_cri::v1::KeyValue;

use crate::spec::fixture::Fixture;

fn args(f: &Fixture) -> Vec<String> {
    f.spec().process().as_ref().unwrap().args().clone().unwrap()
}

fn env(f: &Fixture) -> Vec<String> {
    f.spec().process().as_ref().unwrap().env().clone().unwrap()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// (entrypoint, cmd, command, args) → process.args
type Case<'a> = (
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
);

#[test]
fn command_and_args_matrix() {
    let cases: &[Case] = &[
        (&["/ep"], &["c1"], &[], &[], &["/ep", "c1"]),
        (&[], &["/cmd", "x"], &[], &[], &["/cmd", "x"]),
        (&["/ep"], &["c1"], &[], &["a1"], &["/ep", "a1"]),
        // command replaces the entrypoint and drops the image's CMD.
        (&["/ep"], &["c1"], &["/bin/app"], &[], &["/bin/app"]),
        (
            &["/ep"],
            &["c1"],
            &["/bin/app"],
            &["a1", "a2"],
            &["/bin/app", "a1", "a2"],
        ),
        (&[], &[], &[], &["/bin/only-args"], &["/bin/only-args"]),
        (&[], &["c1"], &["/bin/app"], &[], &["/bin/app"]),
    ];
    for (entrypoint, cmd, command, a, want) in cases {
        let mut f = Fixture::new();
        f.image.entrypoint = strings(entrypoint);
        f.image.cmd = strings(cmd);
        f.container.command = strings(command);
        f.container.args = strings(a);
        assert_eq!(
            args(&f),
            strings(want),
            "{entrypoint:?} {cmd:?} {command:?} {a:?}"
        );
    }
}

#[test]
fn nothing_to_run_is_an_error() {
    let mut f = Fixture::new();
    f.image.cmd.clear();
    assert!(
        f.err().starts_with("command: no program to run"),
        "{}",
        f.err()
    );
    f.container.command = vec![String::new()];
    assert!(f.err().starts_with("command: the program"), "{}", f.err());
}

#[test]
fn env_merges_image_hostname_and_container_in_order() {
    let mut f = Fixture::new();
    f.container.envs = vec![
        KeyValue {
            key: "LANG".into(),
            value: "de_DE.UTF-8".into(),
        },
        KeyValue {
            key: "APP".into(),
            value: "a=b".into(),
        },
    ];
    assert_eq!(
        env(&f),
        strings(&[
            "PATH=/bin:/usr/bin",
            "LANG=de_DE.UTF-8",
            "HOSTNAME=web-0",
            "APP=a=b",
            "HOME=/root"
        ])
    );
}

#[test]
fn default_path_and_home_when_nothing_sets_them() {
    let mut f = Fixture::new();
    f.image.env.clear();
    f.pod.hostname.clear();
    f.sc().run_as_user = Some(k8s_cri::v1::Int64Value { value: 4242 });
    assert_eq!(
        env(&f),
        strings(&[
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME=/"
        ])
    );
    f.container.envs = vec![KeyValue {
        key: "HOME".into(),
        value: "/data".into(),
    }];
    assert!(env(&f).contains(&"HOME=/data".to_string()));
}

#[test]
fn bad_env_keys_are_refused() {
    for key in ["", "A=B", "A\0"] {
        let mut f = Fixture::new();
        f.container.envs = vec![KeyValue {
            key: key.into(),
            value: "v".into(),
        }];
        assert!(f.err().starts_with("envs[0].key:"), "{key:?}: {}", f.err());
    }
}

#[test]
fn cwd_terminal() {
    let mut f = Fixture::new();
    let p = |f: &Fixture| f.spec().process().clone().unwrap();
    assert_eq!(p(&f).cwd().to_str(), Some("/"));
    assert_eq!(p(&f).terminal(), Some(false));
    f.image.working_dir = Some("/srv".into());
    assert_eq!(p(&f).cwd().to_str(), Some("/srv"));
    f.container.working_dir = "/work".into();
    f.container.tty = true;
    assert_eq!(p(&f).cwd().to_str(), Some("/work"));
    assert_eq!(p(&f).terminal(), Some(true));
    f.container.working_dir = "work".into();
    assert!(f.err().starts_with("working_dir:"), "{}", f.err());
    f.container.working_dir.clear();
    f.image.working_dir = Some("../srv".into());
    assert!(f.err().starts_with("image.working_dir:"), "{}", f.err());
}

#[test]
fn rlimits_and_oom_score() {
    let mut f = Fixture::new();
    let p = f.spec().process().clone().unwrap();
    let rl = p.rlimits().clone().unwrap();
    assert_eq!(rl.len(), 1);
    assert_eq!(
        rl[0].typ(),
        oci_spec::runtime::PosixRlimitType::RlimitNofile
    );
    assert_eq!((rl[0].soft(), rl[0].hard()), (1_048_576, 1_048_576));
    assert_eq!(p.oom_score_adj(), Some(0));
    f.resources().oom_score_adj = -997;
    assert_eq!(
        f.spec().process().as_ref().unwrap().oom_score_adj(),
        Some(-997)
    );
    f.resources().oom_score_adj = 1001;
    assert!(
        f.err().starts_with("linux.resources.oom_score_adj:"),
        "{}",
        f.err()
    );
}
