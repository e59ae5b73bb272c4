-- The sample application database Sluice captures.
create table customers (
    id serial primary key,
    name text not null,
    email text unique,
    created_at timestamptz not null default now()
);
create table orders (
    id bigserial primary key,
    customer_id int not null references customers (id),
    total numeric(12, 2) not null,
    status text not null default 'new',
    placed_at timestamptz not null default now()
);
insert into customers (name, email) values
    ('Grace Hopper', 'grace@example.com'),
    ('Alan Turing', 'alan@example.com');
insert into orders (customer_id, total) values (1, 42.00), (2, 7.50);
