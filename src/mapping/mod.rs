//! Mappings: how a source table's changes become row changes on target tables. Routing and
//! column rules ([`route`]), CEL expressions ([`expr`]) and the direct evaluator of their
//! common subset ([`direct`]), and blob object key templates ([`keys`]). Checked when the config
//! loads; run by apply's workers.

pub mod direct;
pub mod expr;
pub mod keys;
pub mod route;

pub use route::*;
