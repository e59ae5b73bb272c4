//! What the source database's catalog says about types and captured tables.

use std::collections::HashMap;

use sluice_core::{ColumnClass, ColumnDesc, TableId};
use tokio_postgres::Client;

use crate::error::PostgresError;
use crate::types::{CatalogType, TypeMap};

/// A captured table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub id: TableId,
    pub oid: u32,
    /// Columns in attribute order, without dropped and generated columns (pgoutput in
    /// Postgres 15 does not publish generated columns, so the snapshot leaves them out too).
    pub columns: Vec<(String, u32)>,
    /// Primary-key column names, in key order (empty without a primary key).
    pub primary_key: Vec<String>,
    /// Columns of the replica-identity index (`REPLICA IDENTITY USING INDEX`), in index order.
    pub identity_index: Vec<String>,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// `r` table, `p` partitioned table, anything else is not capturable.
    pub kind: u8,
    pub can_select: bool,
    pub is_owner: bool,
}

impl TableInfo {
    /// The key Sluice partitions and upserts by, or why the table cannot be captured.
    pub fn key(&self) -> Result<Vec<String>, String> {
        let fix = format!(
            "add a primary key (alter table {t} add primary key (…)), or a unique index on not-null \
             columns and `alter table {t} replica identity using index <index>`",
            t = self.id
        );
        match self.replica_identity {
            b'n' => Err(format!(
                "table {} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be \
                 published: {fix}",
                self.id
            )),
            b'i' if !self.primary_key.is_empty() => Ok(self.primary_key.clone()),
            b'i' => Ok(self.identity_index.clone()),
            _ if !self.primary_key.is_empty() => Ok(self.primary_key.clone()),
            b'f' => Err(format!(
                "table {} has no primary key (REPLICA IDENTITY FULL alone gives no key to \
                 partition and upsert by): {fix}",
                self.id
            )),
            _ => Err(format!(
                "table {} has no primary key and no replica-identity index; publishing it would \
                 make the application's own updates and deletes fail: {fix}",
                self.id
            )),
        }
    }
}

/// Loads every type of the database: enough to convert domains, arrays and enums.
pub async fn load_types(client: &Client) -> Result<TypeMap, PostgresError> {
    let rows = client
        .query(
            "select oid, typtype::text, typcategory::text, typelem, typbasetype from pg_catalog.pg_type",
            &[],
        )
        .await
        .map_err(PostgresError::query("reading pg_type"))?;
    let mut map = HashMap::with_capacity(rows.len());
    for row in rows {
        let oid: u32 = row.get(0);
        let typtype: String = row.get(1);
        let category: String = row.get(2);
        map.insert(
            oid,
            CatalogType {
                typtype: typtype.bytes().next().unwrap_or(b'b'),
                category: category.bytes().next().unwrap_or(b'U'),
                elem: row.get(3),
                base: row.get(4),
            },
        );
    }
    Ok(TypeMap::new(map))
}

/// Describes `table`, or `None` when it does not exist.
pub async fn describe_table(
    client: &Client,
    table: &TableId,
) -> Result<Option<TableInfo>, PostgresError> {
    let context = || format!("reading the catalog entry of {table}");
    let Some(row) = client
        .query_opt(
            "select c.oid, c.relreplident::text, c.relkind::text,
                    has_table_privilege(c.oid, 'select'),
                    pg_has_role(c.relowner, 'usage')
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = $2",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(PostgresError::query(context()))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let replident: String = row.get(1);
    let relkind: String = row.get(2);
    let columns = client
        .query(
            "select attname::text, atttypid from pg_catalog.pg_attribute
              where attrelid = $1 and attnum > 0 and not attisdropped and attgenerated = ''
              order by attnum",
            &[&oid],
        )
        .await
        .map_err(PostgresError::query(context()))?
        .into_iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, u32>(1)))
        .collect();
    let index_columns = |primary: bool| {
        let sql = format!(
            "select a.attname::text
               from pg_catalog.pg_index i
               cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
               join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
              where i.indrelid = $1 and i.{}
              order by k.ord",
            if primary {
                "indisprimary"
            } else {
                "indisreplident"
            }
        );
        async move {
            client.query(&sql, &[&oid]).await.map(|rows| {
                rows.into_iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
        }
    };
    let primary_key = index_columns(true)
        .await
        .map_err(PostgresError::query(context()))?;
    let identity_index = index_columns(false)
        .await
        .map_err(PostgresError::query(context()))?;
    Ok(Some(TableInfo {
        id: table.clone(),
        oid,
        columns,
        primary_key,
        identity_index,
        replica_identity: replident.bytes().next().unwrap_or(b'd'),
        kind: relkind.bytes().next().unwrap_or(b'r'),
        can_select: row.get(3),
        is_owner: row.get(4),
    }))
}

/// The tables a publication currently contains.
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<TableId>>, PostgresError> {
    let exists = client
        .query_opt(
            "select 1 from pg_catalog.pg_publication where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(PostgresError::query("reading pg_publication"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            "select schemaname::text, tablename::text from pg_catalog.pg_publication_tables where pubname = $1",
            &[&publication],
        )
        .await
        .map_err(PostgresError::query("reading pg_publication_tables"))?;
    Ok(Some(
        rows.into_iter()
            .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    ))
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub wal_status: Option<String>,
}

pub async fn slot(client: &Client, name: &str) -> Result<Option<SlotInfo>, PostgresError> {
    let row = client
        .query_opt(
            "select plugin::text, database::text, wal_status
               from pg_catalog.pg_replication_slots where slot_name = $1",
            &[&name],
        )
        .await
        .map_err(PostgresError::query("reading pg_replication_slots"))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        wal_status: r.get(2),
    }))
}

/// A table's column names and key columns, as a source (for checking mappings against it);
/// `None` if it does not exist.
/// A table's columns (with their types, for checking mappings) and its key, or `None` when it
/// does not exist.
pub async fn source_columns(
    connection: &crate::config::PostgresConnection,
    table: &TableId,
) -> Result<Option<(Vec<ColumnDesc>, Vec<String>)>, PostgresError> {
    let client = crate::client::connect(connection, "check").await?;
    let Some(info) = describe_table(&client, table).await? else {
        return Ok(None);
    };
    let key = info.key().unwrap_or_default();
    let rows = client
        .query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod), not a.attnotnull,
                    b.typcategory::text, b.oid
               from pg_catalog.pg_attribute a
               join pg_catalog.pg_type t on t.oid = a.atttypid
               join pg_catalog.pg_type b on b.oid = case when t.typtype = 'd' then t.typbasetype else t.oid end
              where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped and a.attgenerated = ''
              order by a.attnum",
            &[&info.oid],
        )
        .await
        .map_err(PostgresError::query(format!("reading the column types of {table}")))?;
    let columns = rows
        .iter()
        .map(|r| {
            let category: String = r.get(3);
            let oid: u32 = r.get(4);
            ColumnDesc {
                name: r.get(0),
                sql_type: r.get(1),
                nullable: r.get(2),
                class: class_of(oid, category.as_bytes().first().copied().unwrap_or(b'U')),
            }
        })
        .collect();
    Ok(Some((columns, key)))
}

/// The class of a (base) type, from its OID and `pg_type.typcategory`.
fn class_of(oid: u32, category: u8) -> ColumnClass {
    match (oid, category) {
        (16, _) => ColumnClass::Bool,
        (20 | 21 | 23, _) => ColumnClass::Integer,
        (700 | 701, _) => ColumnClass::Float,
        (1700, _) => ColumnClass::Decimal,
        (17, _) => ColumnClass::Bytes,
        (114 | 3802, _) => ColumnClass::Json,
        (_, b'D') => ColumnClass::Temporal,
        (_, b'S') => ColumnClass::Text,
        _ => ColumnClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pk: &[&str], ident: &[&str], replident: u8) -> TableInfo {
        TableInfo {
            id: TableId::new("public", "t"),
            oid: 1,
            columns: vec![("a".into(), 23), ("b".into(), 23)],
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            identity_index: ident.iter().map(|s| s.to_string()).collect(),
            replica_identity: replident,
            kind: b'r',
            can_select: true,
            is_owner: true,
        }
    }

    #[test]
    fn key_is_the_primary_key_or_the_identity_index() {
        assert_eq!(info(&["a"], &[], b'd').key(), Ok(vec!["a".to_string()]));
        assert_eq!(info(&["a"], &[], b'f').key(), Ok(vec!["a".to_string()]));
        assert_eq!(info(&[], &["b"], b'i').key(), Ok(vec!["b".to_string()]));
        assert_eq!(info(&["a"], &["b"], b'i').key(), Ok(vec!["a".to_string()]));
    }

    #[test]
    fn tables_without_a_usable_key_are_refused_with_the_fix() {
        let no_key = info(&[], &[], b'd').key().expect_err("refused");
        assert!(no_key.contains("no primary key") && no_key.contains("add a primary key"));
        let full = info(&[], &[], b'f').key().expect_err("refused");
        assert!(full.contains("REPLICA IDENTITY FULL alone"));
        let nothing = info(&["a"], &[], b'n').key().expect_err("refused");
        assert!(nothing.contains("REPLICA IDENTITY NOTHING"));
    }
}
