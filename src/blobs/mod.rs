//! Blobs: files and byte columns uploaded to S3-compatible stores, their URLs written into
//! target rows.
//!
//! The apply worker uploads (and the store verifies, by the SHA-256 sent with each upload)
//! every object a batch needs before the target transaction that writes the rows, their URLs
//! and the ledger rows commits. Objects a committed batch no longer references (a row deleted
//! or filtered out, a file replaced) are deleted after the commit, once no ledger row
//! references them. The ledger (`sluice.blobs` in the target) records every object; `sluice
//! blobs verify` compares it with the bucket.

pub mod ledger;
pub mod stage;
pub mod store;
pub mod verify;

pub use crate::mapping::keys::{KeyTemplate, PartialKey};

pub use sluice_s3::hex;

/// A content type from a file name's extension.
pub fn content_type_of(ext: &str) -> &'static str {
    match ext.trim_start_matches('.').to_ascii_lowercase().as_str() {
        "pdf" => "application/pdf",
        "json" => "application/json",
        "txt" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}
