use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the image store, one variant per step. Each names the file,
/// blob or layer it was working on, so a refused import says what was wrong with the tarball.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("pull {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("image store {path}: cannot {op}: {source}")]
    Store {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image store {path}: cannot take the store's lock: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("image store {path}: repositories file is corrupt: {source}")]
    CorruptRepositories {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot open the image tarball: {source}")]
    OpenTarball { path: PathBuf, source: io::Error },
    #[error("{path}: cannot read the image tarball (truncated or corrupt?): {source}")]
    ReadTarball { path: PathBuf, source: io::Error },
    #[error(
        "{path}: member `{member}` is truncated: the tarball ends after {got} of its {expected} bytes"
    )]
    TruncatedMember {
        path: PathBuf,
        member: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "{path}: not an image tarball: found neither `manifest.json` (docker save) nor `index.json` and `oci-layout` (OCI image layout)"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path}: `{member}` is missing from the tarball (referenced by {referenced_by})")]
    MissingMember {
        path: PathBuf,
        member: String,
        referenced_by: String,
    },
    #[error("{path}: `{member}` is not valid JSON of the expected shape: {source}")]
    BadJson {
        path: PathBuf,
        member: String,
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    BadFormat { path: PathBuf, what: String },
    #[error("bad digest `{digest}`: {reason}")]
    BadDigest {
        digest: String,
        reason: &'static str,
    },
    #[error(
        "blob `{blob}` is corrupt: its content hashes to {actual}, but it is named/referenced as {expected}"
    )]
    DigestMismatch {
        blob: String,
        expected: String,
        actual: String,
    },
    #[error("blob `{blob}` has {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch {
        blob: String,
        expected: i64,
        actual: u64,
    },
    #[error(
        "layer `{layer}` is corrupt: its uncompressed content hashes to {actual}, but the image config's rootfs.diff_ids says {expected}"
    )]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error(
        "image config `{config}` lists {diff_ids} layer diff_ids, but the manifest has {layers} layers"
    )]
    LayerCount {
        config: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("{path}: no image for linux/{arch} in the index `{index}`")]
    NoMatchingPlatform {
        path: PathBuf,
        index: String,
        arch: String,
    },
    #[error("layer `{layer}`: cannot read its tar stream (truncated or corrupt?): {source}")]
    ReadLayer { layer: String, source: io::Error },
    #[error("layer `{layer}`: {what}")]
    UnsupportedLayer { layer: String, what: &'static str },
    #[error("layer `{layer}`: entry `{entry}`: {reason}; refusing the layer")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: &'static str,
    },
    #[error("layer `{layer}`: cannot unpack entry `{entry}` ({step}): {source}")]
    Unpack {
        layer: String,
        entry: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("invalid image reference `{reference}`: {reason}")]
    InvalidReference {
        reference: String,
        reason: &'static str,
    },
    #[error("no such image: {reference}")]
    NotFound { reference: String },
    #[error("image reference `{reference}` is ambiguous: it matches {candidates:?}")]
    Ambiguous {
        reference: String,
        candidates: Vec<String>,
    },
    #[error("image {reference} ({id}) is in use by a container; remove the container first")]
    InUse { reference: String, id: String },
    #[error("image {id}: layer {diff_id} is missing from the store at {path}")]
    MissingLayer {
        id: String,
        diff_id: String,
        path: PathBuf,
    },
    #[error("image {id}: config blob {path} cannot be read: {source}")]
    ReadConfig {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
}
