-- A small Modulo-like database: related tables, a few thousand rows, a sequence,
-- a view, a non-public schema and awkward values (quotes, NULLs, unicode, bytea).
CREATE SCHEMA IF NOT EXISTS billing;

CREATE TABLE customers (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id     serial PRIMARY KEY,
    sku    text NOT NULL UNIQUE,
    title  text NOT NULL,
    price  numeric(10,2) NOT NULL CHECK (price >= 0)
);

CREATE TABLE orders (
    id           bigserial PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers(id),
    status       text NOT NULL DEFAULT 'new',
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id);

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    product_id  int NOT NULL REFERENCES products(id),
    quantity    int NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE billing.invoices (
    id        bigserial PRIMARY KEY,
    order_id  bigint NOT NULL REFERENCES orders(id),
    amount    numeric(12,2) NOT NULL,
    pdf       bytea
);

CREATE VIEW order_totals AS
SELECT o.id AS order_id, sum(p.price * i.quantity) AS total
FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id
GROUP BY o.id;

INSERT INTO customers (email, name)
SELECT 'customer' || g || '@example.com',
       CASE WHEN g % 97 = 0 THEN 'O''Brien ' || g WHEN g % 89 = 0 THEN 'Zoë ' || g ELSE 'Customer ' || g END
FROM generate_series(1, 1000) g;

INSERT INTO products (sku, title, price)
SELECT 'SKU-' || g, 'Product ' || g, (g % 50) + 0.99 FROM generate_series(1, 200) g;

INSERT INTO orders (customer_id, status, note)
SELECT (g % 1000) + 1, (ARRAY['new','paid','shipped'])[(g % 3) + 1],
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'tab	and "quotes" ' || g END
FROM generate_series(1, 3000) g;

INSERT INTO order_items (order_id, product_id, quantity)
SELECT o, ((o * 7 + k) % 200) + 1, (k % 3) + 1
FROM generate_series(1, 3000) o, generate_series(1, 2) k;

INSERT INTO billing.invoices (order_id, amount, pdf)
SELECT g, g * 1.5, decode(md5(g::text), 'hex') FROM generate_series(1, 1500) g;

ANALYZE;
