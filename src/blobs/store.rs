//! One S3-compatible bucket: the S3 connector (`sluice_s3`).

pub use sluice_s3::*;
