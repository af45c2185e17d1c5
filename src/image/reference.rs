//! Image names. Tags are stored as written (with `:latest` added when missing), and matched
//! in docker's canonical form, so `busybox`, `busybox:latest`, `docker.io/busybox` and
//! `docker.io/library/busybox:latest` all name the same image.

use super::ImageError;

/// Adds `:latest` to a name without a tag, after checking it is a plausible `name[:tag]`.
pub fn normalize_tag(reference: &str) -> Result<String, ImageError> {
    let bad = |reason| ImageError::InvalidReference {
        reference: reference.to_string(),
        reason,
    };
    if reference.is_empty() {
        return Err(bad("empty"));
    }
    if reference.len() > 1024 {
        return Err(bad("longer than 1024 bytes"));
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("contains whitespace or control characters"));
    }
    if reference.contains('@') {
        return Err(bad("a digest (`@...`) is not a tag"));
    }
    let (name, tag) = split_tag(reference);
    if name.is_empty() || name.split('/').any(str::is_empty) {
        return Err(bad("empty name component"));
    }
    match tag {
        Some("") => Err(bad("empty tag")),
        Some(_) => Ok(reference.to_string()),
        None => Ok(format!("{reference}:latest")),
    }
}

/// Splits `name[:tag]`; a `:` before the last `/` belongs to a registry's port.
fn split_tag(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(i) => (
            &reference[..last_slash + i],
            Some(&reference[last_slash + i + 1..]),
        ),
        None => (reference, None),
    }
}

/// Docker's canonical form of a `name:tag`: `busybox:latest` ->
/// `docker.io/library/busybox:latest`. `reference` must already carry a tag.
pub fn canonical(reference: &str) -> String {
    let (first, rest) = match reference.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest)
        }
        _ => ("docker.io", reference),
    };
    let domain = if first == "index.docker.io" {
        "docker.io"
    } else {
        first
    };
    if domain == "docker.io" && !rest.contains('/') {
        format!("docker.io/library/{rest}")
    } else {
        format!("{domain}/{rest}")
    }
}

/// Splits a stored tag into (repository, tag) for listing.
pub fn repository_and_tag(tag: &str) -> (String, String) {
    let (name, t) = split_tag(tag);
    (name.to_string(), t.unwrap_or("latest").to_string())
}

/// The tag an OCI index entry names. `io.containerd.image.name` holds a full reference;
/// `org.opencontainers.image.ref.name` holds either a full reference or (per the spec) only a
/// tag: one without `:` or `/` is taken as a bare name, as the tools that write whole names
/// there (skopeo, buildah) do, and as docker-loaded short names are.
pub fn from_oci_annotations(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    annotations
        .get("io.containerd.image.name")
        .or_else(|| annotations.get("org.opencontainers.image.ref.name"))
        .filter(|s| !s.is_empty())
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_canonicalizes() {
        let n = |s: &str| normalize_tag(s).map_err(|e| e.to_string());
        assert_eq!(n("busybox").as_deref(), Ok("busybox:latest"));
        assert_eq!(n("busybox:1.36").as_deref(), Ok("busybox:1.36"));
        assert_eq!(
            n("localhost:5000/app").as_deref(),
            Ok("localhost:5000/app:latest")
        );
        assert!(n("").is_err() && n("a b").is_err() && n("x:").is_err());
        assert!(n("x@sha256:00").is_err() && n("/x").is_err());
        assert_eq!(
            canonical("busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            canonical("docker.io/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(canonical("me/app:1"), "docker.io/me/app:1");
        assert_eq!(canonical("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(canonical("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
        assert_eq!(
            repository_and_tag("localhost:5000/app:1"),
            ("localhost:5000/app".to_string(), "1".to_string())
        );
    }
}
