//! What a Postgres source knows of a captured table: its shape and how to convert its
//! columns. Shared by the source, its snapshot, its stream and its backfill.

use std::sync::Arc;

use sluice_core::TableSchema;

use crate::client::quote_ident;
use crate::types::TypeKind;

/// A table being captured: its current shape and how to convert its columns.
#[derive(Debug)]
pub struct CapturedTable {
    pub schema: Arc<TableSchema>,
    pub kinds: Vec<TypeKind>,
    pub key_names: Vec<String>,
}

impl CapturedTable {
    /// The table's columns, quoted and comma-separated, for a select list.
    pub fn select_list(&self) -> String {
        self.schema.select_list(quote_ident)
    }
}
