-- The reporting database Sluice applies to. Sluice creates its own schema `sluice` here
-- (offsets, dead letters) on first start; target tables are created by you.
create table customers (
    id int primary key,
    name text not null,
    email text,
    created_at timestamptz not null
);
create table customer_orders (
    order_id bigint primary key,
    customer_id int not null,
    amount numeric(12, 2) not null,
    status text not null,
    placed_at timestamptz not null,
    -- not in the source: keeps its default, never overwritten by Sluice
    loaded_at timestamptz not null default now()
);
