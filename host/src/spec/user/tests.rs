use k8s_cri::v1::{Int64Value, SupplementalGroupsPolicy};

use crate::spec::fixture::Fixture;

/// (uid, gid, additionalGids)
fn who(f: &Fixture) -> (u32, u32, Vec<u32>) {
    let spec = f.spec();
    let u = spec.process().as_ref().unwrap().user();
    (u.uid(), u.gid(), u.additional_gids().clone().unwrap())
}

fn v(value: i64) -> Option<Int64Value> {
    Some(Int64Value { value })
}

#[test]
fn root_by_default_with_roots_groups() {
    let f = Fixture::new();
    assert_eq!(who(&f), (0, 0, vec![0, 10]));
}

#[test]
fn run_as_user_takes_the_gid_from_passwd() {
    let mut f = Fixture::new();
    f.sc().run_as_user = v(1000);
    assert_eq!(who(&f), (1000, 1000, vec![1000, 10, 29]));
    f.sc().run_as_group = v(5);
    assert_eq!(who(&f), (1000, 5, vec![5, 10, 29]));
    // A uid the image does not know: gid 0, no image groups.
    f.sc().run_as_group = None;
    f.sc().run_as_user = v(4242);
    assert_eq!(who(&f), (4242, 0, vec![0]));
}

#[test]
fn run_as_username_is_looked_up() {
    let mut f = Fixture::new();
    f.sc().run_as_username = "bob".into();
    assert_eq!(who(&f), (1001, 100, vec![100, 29]));
    f.sc().run_as_username = "mallory".into();
    assert_eq!(
        f.err(),
        "security_context.run_as_username: user \"mallory\" is not in the image's /etc/passwd"
    );
    f.passwd = None;
    f.sc().run_as_username = "bob".into();
    assert!(
        f.err().contains("the image has no /etc/passwd"),
        "{}",
        f.err()
    );
}

#[test]
fn conflicting_or_bad_ids_are_refused() {
    let mut f = Fixture::new();
    f.sc().run_as_group = v(5);
    assert!(f
        .err()
        .starts_with("security_context.run_as_group: is set without"));
    f.sc().run_as_user = v(-1);
    assert!(f
        .err()
        .starts_with("security_context.run_as_user: -1 is out of range"));
    f.sc().run_as_user = v(1);
    f.sc().run_as_username = "daemon".into();
    assert!(f
        .err()
        .starts_with("security_context.run_as_username: must not be set"));
    f.sc().run_as_username.clear();
    f.sc().run_as_group = v(1 << 32);
    assert!(f.err().starts_with("security_context.run_as_group:"));
    f.sc().run_as_group = None;
    f.sc().supplemental_groups = vec![7, -3];
    assert!(f
        .err()
        .starts_with("security_context.supplemental_groups[1]: -3"));
}

#[test]
fn image_user_forms() {
    for (user, want) in [
        ("1000", (1000, 1000)),
        ("alice", (1000, 1000)),
        ("bob:audio", (1001, 29)),
        ("bob:7", (1001, 7)),
        ("5000:5001", (5000, 5001)),
        ("5000", (5000, 0)),
        ("daemon:", (1, 1)),
    ] {
        let mut f = Fixture::new();
        f.image.user = Some(user.into());
        let (uid, gid, _) = who(&f);
        assert_eq!((uid, gid), want, "{user}");
    }
}

#[test]
fn unknown_image_names_are_errors() {
    let mut f = Fixture::new();
    f.image.user = Some("nobody".into());
    assert_eq!(
        f.err(),
        "image.user: user \"nobody\" is not in the image's /etc/passwd"
    );
    f.image.user = Some("alice:video".into());
    assert_eq!(
        f.err(),
        "image.user: group \"video\" is not in the image's /etc/group"
    );
    f.image.user = Some(":users".into());
    assert!(f.err().starts_with("image.user:"));
    // The security context wins over a broken image USER.
    f.sc().run_as_user = v(0);
    assert_eq!(who(&f).0, 0);
}

#[test]
fn supplemental_groups_merge_or_replace() {
    let mut f = Fixture::new();
    f.sc().run_as_user = v(1000);
    f.sc().supplemental_groups = vec![2000, 10];
    assert_eq!(who(&f).2, vec![1000, 10, 29, 2000]);
    f.sc().supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(who(&f).2, vec![1000, 2000, 10]);
}

#[test]
fn no_new_privileges_follows_the_context() {
    let mut f = Fixture::new();
    let nnp = |f: &Fixture| f.spec().process().as_ref().unwrap().no_new_privileges();
    assert_eq!(nnp(&f), Some(false));
    f.sc().no_new_privs = true;
    assert_eq!(nnp(&f), Some(true));
}
