//! Reading `sluice.blobs`, the ledger of objects, in a target Postgres. Rows are written by the
//! sink in the same transaction as the target rows (see [`super::stage`]); this module reads
//! them, and removes the rows of objects deleted after a commit.

use std::collections::HashMap;

use tokio_postgres::Client;

/// Its columns, in the order the stage writes them.
pub const COLUMNS: [&str; 14] = [
    "sink",
    "target_table",
    "target_key",
    "url_column",
    "object_key",
    "store",
    "sha256",
    "size",
    "content_type",
    "source_path",
    "url",
    "expires_at",
    "state",
    "updated_at",
];

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub target_table: String,
    pub target_key: String,
    pub url_column: String,
    pub object_key: String,
    pub store: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    pub source_path: Option<String>,
    pub url: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub state: String,
}

/// Which target row and URL column an entry belongs to.
pub type Slot = (String, String, String);

const SELECT: &str = "select target_table, target_key, url_column, object_key, store, sha256,
        size, content_type, source_path, url, extract(epoch from expires_at)::bigint, state
   from sluice.blobs";

fn entry(r: &tokio_postgres::Row) -> Entry {
    Entry {
        target_table: r.get(0),
        target_key: r.get(1),
        url_column: r.get(2),
        object_key: r.get(3),
        store: r.get(4),
        sha256: r.get(5),
        size: r.get(6),
        content_type: r.get(7),
        source_path: r.get(8),
        url: r.get(9),
        expires_at: r.get(10),
        state: r.get(11),
    }
}

/// The live entries of these slots.
pub async fn live(
    client: &Client,
    sink: &str,
    slots: &[Slot],
) -> Result<HashMap<Slot, Entry>, tokio_postgres::Error> {
    if slots.is_empty() {
        return Ok(HashMap::new());
    }
    let tables: Vec<&str> = slots.iter().map(|s| s.0.as_str()).collect();
    let keys: Vec<&str> = slots.iter().map(|s| s.1.as_str()).collect();
    let columns: Vec<&str> = slots.iter().map(|s| s.2.as_str()).collect();
    let rows = client
        .query(
            &format!(
                "{SELECT} join unnest($2::text[], $3::text[], $4::text[]) as w(t, k, c)
                   on w.t = target_table and w.k = target_key and w.c = url_column
                 where sink = $1 and state = 'live'"
            ),
            &[&sink, &tables, &keys, &columns],
        )
        .await?;
    Ok(rows
        .iter()
        .map(entry)
        .map(|e| {
            (
                (
                    e.target_table.clone(),
                    e.target_key.clone(),
                    e.url_column.clone(),
                ),
                e,
            )
        })
        .collect())
}

/// Of these objects of `store`, the ones some live entry (of any sink) references, with the
/// SHA-256 recorded for them.
pub async fn referenced(
    client: &Client,
    store: &str,
    object_keys: &[String],
) -> Result<HashMap<String, String>, tokio_postgres::Error> {
    if object_keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = client
        .query(
            "select distinct on (object_key) object_key, sha256 from sluice.blobs
              where store = $1 and object_key = any($2) and state = 'live'",
            &[&store, &object_keys],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Removes the released entries of an object that was deleted.
pub async fn forget_released(
    client: &Client,
    store: &str,
    object_key: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "delete from sluice.blobs where store = $1 and object_key = $2 and state = 'released'",
            &[&store, &object_key],
        )
        .await?;
    Ok(())
}

/// Objects with released entries of this sink: (store, object key).
pub async fn released(
    client: &Client,
    sink: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select distinct store, object_key from sluice.blobs where sink = $1 and state = 'released'",
            &[&sink],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Live entries of this sink whose URL expires before `before` (unix seconds).
pub async fn expiring(
    client: &Client,
    sink: &str,
    before: i64,
) -> Result<Vec<Entry>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "{SELECT} where sink = $1 and state = 'live'
                   and expires_at < to_timestamp($2::bigint) order by expires_at limit 1000"
            ),
            &[&sink, &before],
        )
        .await?;
    Ok(rows.iter().map(entry).collect())
}

/// Every entry of this sink.
pub async fn all(client: &Client, sink: &str) -> Result<Vec<Entry>, tokio_postgres::Error> {
    let rows = client
        .query(&format!("{SELECT} where sink = $1"), &[&sink])
        .await?;
    Ok(rows.iter().map(entry).collect())
}

/// Every object key any entry (of any sink, live or released) names in `store`.
pub async fn known_keys(
    client: &Client,
    store: &str,
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select distinct object_key from sluice.blobs where store = $1",
            &[&store],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Renews one entry's URL, and the target row's URL column where it still holds the old URL
/// (so a newer object written meanwhile is never overwritten), in one transaction.
pub async fn renew_url(
    client: &mut Client,
    sink: &str,
    e: &Entry,
    target_sql: &str,
    url: &str,
    expires_at: i64,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let updated = tx
        .execute(target_sql, &[&url, &e.url, &e.target_key])
        .await?;
    tx.execute(
        "update sluice.blobs set url = $1, expires_at = to_timestamp($2::bigint), updated_at = now()
          where sink = $3 and target_table = $4 and target_key = $5 and url_column = $6
            and object_key = $7 and state = 'live'",
        &[
            &url,
            &expires_at,
            &sink,
            &e.target_table,
            &e.target_key,
            &e.url_column,
            &e.object_key,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}
