//! Names: which image a reference means, and how tags and digests move
//! between images as they are pulled and removed.

use crate::image::index::Record;
use crate::image::reference::Lookup;
use crate::image::types::Image;

pub(super) fn matches(image: &Image, lookup: &Lookup) -> bool {
    match lookup {
        Lookup::Id(id) => image.id == *id,
        Lookup::Tag(t) => image.repo_tags.contains(t),
        Lookup::RepoDigest(d) => image.repo_digests.contains(d),
    }
}

/// The repository part of `repo:tag` (the tag never holds a `/`).
fn repo_of_tag(tag: &str) -> &str {
    match tag.rfind(':') {
        Some(i) if !tag[i..].contains('/') => &tag[..i],
        _ => tag,
    }
}

/// The repository part of `repo@digest`.
fn repo_of_digest(repo_digest: &str) -> &str {
    repo_digest.split('@').next().unwrap_or(repo_digest)
}

/// Removes `tag` from `image`, and with its repository's last tag the
/// repository's digests: they were recorded by pulling that tag, and an
/// untagged image left behind would never go away by name.
pub(super) fn untag(image: &mut Image, tag: &str) {
    if !image.repo_tags.iter().any(|t| t == tag) {
        return;
    }
    image.repo_tags.retain(|t| t != tag);
    let repo = repo_of_tag(tag);
    if !image.repo_tags.iter().any(|t| repo_of_tag(t) == repo) {
        image.repo_digests.retain(|d| repo_of_digest(d) != repo);
    }
}

/// `records` with `tag` on image `id` only (merging `new` into it, or
/// adding it), dropping images left without any name.
pub(super) fn with_tag(
    records: &[Record],
    tag: Option<String>,
    id: &str,
    new: Option<Record>,
) -> Vec<Record> {
    let mut records = records.to_vec();
    if let Some(tag) = &tag {
        for r in records.iter_mut().filter(|r| r.image.id != id) {
            // The tag moved: the old image keeps its digests (like
            // containerd), so it stays until removed by id.
            r.image.repo_tags.retain(|t| t != tag);
        }
    }
    match records.iter_mut().find(|r| r.image.id == id) {
        Some(existing) => {
            if let Some(new) = new {
                for d in new.image.repo_digests {
                    if !existing.image.repo_digests.contains(&d) {
                        existing.image.repo_digests.push(d);
                    }
                }
            }
            if let Some(tag) = tag {
                if !existing.image.repo_tags.contains(&tag) {
                    existing.image.repo_tags.push(tag);
                }
            }
        }
        None => records.extend(new),
    }
    records.retain(|r| !r.is_unreferenced());
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_repos_of_tags_with_ports() {
        assert_eq!(
            repo_of_tag("127.0.0.1:5000/a/b:multi"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(
            repo_of_tag("docker.io/library/busybox:latest"),
            "docker.io/library/busybox"
        );
        assert_eq!(
            repo_of_digest("127.0.0.1:5000/a/b@sha256:00"),
            "127.0.0.1:5000/a/b"
        );
    }

    #[test]
    fn untagging_the_last_tag_of_a_repo_drops_its_digests() {
        let mut image = Image {
            id: "sha256:x".into(),
            repo_tags: vec!["r.io/a:1".into(), "r.io/a:2".into(), "r.io/b:1".into()],
            repo_digests: vec!["r.io/a@sha256:d".into(), "r.io/b@sha256:d".into()],
            size: 0,
            config: Default::default(),
            layers: vec![],
        };
        untag(&mut image, "r.io/a:1");
        assert_eq!(image.repo_digests.len(), 2);
        untag(&mut image, "r.io/a:2");
        assert_eq!(image.repo_digests, ["r.io/b@sha256:d"]);
        untag(&mut image, "r.io/b:1");
        assert!(image.repo_tags.is_empty() && image.repo_digests.is_empty());
    }
}
