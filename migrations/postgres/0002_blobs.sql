-- The blob ledger: every object Sluice uploaded for a target row's URL column. Written in the
-- same transaction as the rows (through the sink, like any target table), so that a committed
-- row always has its object recorded, and read by `sluice blobs verify`.
create table if not exists sluice.blobs (
    sink          text        not null,
    -- the target row: table (schema.table), key values (a JSON array) and URL column
    target_table  text        not null,
    target_key    text        not null,
    url_column    text        not null,
    object_key    text        not null,
    store         text        not null,
    sha256        text        not null,
    size          bigint      not null,
    content_type  text        not null,
    -- the file it was read from (null for a byte column)
    source_path   text,
    url           text        not null,
    -- when a presigned URL expires (null for a public URL)
    expires_at    timestamptz,
    -- live: the row references the object; released: it no longer does (row deleted, file
    -- replaced) and the object is deleted once no live row references it
    state         text        not null,
    updated_at    timestamptz not null default now(),
    primary key (sink, target_table, target_key, url_column, object_key)
);

create index if not exists blobs_object_idx on sluice.blobs (store, object_key);
create index if not exists blobs_expiry_idx on sluice.blobs (sink, expires_at) where state = 'live';
