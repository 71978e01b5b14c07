-- Emulations (`linerate up --database URL`): an emulator is one controller node, named after
-- its emulation, and these tables are its configuration. `up` writes `links` and `emu_nodes`
-- from the topology; edits to `links` and `emu_routes` reach the running network within
-- milliseconds through the same notifications as the other tables.

-- The emulation's nodes as built (for finding names and addresses from SQL; not configuration).
CREATE TABLE emu_nodes (
    node text NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    address inet,
    PRIMARY KEY (node, name)
);

-- One row per link direction: `src` sends to `dst` (`node:interface` each). id is
-- 2 * link + side + 1 in the topology's order and is set by `up`. A deleted row takes its
-- direction down; NULL loss_ppm or queue_packets keep what the topology gave (a
-- Gilbert-Elliott model cannot be written here).
CREATE TABLE links (
    id bigint PRIMARY KEY CHECK (id > 0),
    node text NOT NULL,
    src text NOT NULL,
    dst text NOT NULL,
    rate_bps bigint CHECK (rate_bps BETWEEN 1 AND 10000000000000),
    delay_us bigint NOT NULL DEFAULT 0 CHECK (delay_us BETWEEN 0 AND 60000000),
    jitter_us bigint NOT NULL DEFAULT 0 CHECK (jitter_us >= 0 AND jitter_us <= delay_us),
    loss_ppm integer CHECK (loss_ppm BETWEEN 0 AND 1000000),
    queue_packets integer CHECK (queue_packets BETWEEN 1 AND 1000000),
    up boolean NOT NULL DEFAULT true
);
CREATE INDEX links_node ON links (node);

-- Routes of emulated routers laid over the computed ones: traffic for `prefix` at `router`
-- goes to neighbour `via`; several rows for one router and prefix spread flows by weight. With
-- `match` (a rule as in `fwd --filter` without its action, e.g. 'udp any any dport 5001') the
-- row is a per-flow route, tried before the prefix routes. Deleting a row restores the
-- computed route.
CREATE TABLE emu_routes (
    id bigserial PRIMARY KEY,
    node text NOT NULL,
    router text NOT NULL,
    prefix cidr NOT NULL,
    via text NOT NULL,
    weight integer NOT NULL DEFAULT 1 CHECK (weight > 0),
    match text CHECK (length(match) BETWEEN 1 AND 256)
);
CREATE INDEX emu_routes_node ON emu_routes (node);

CREATE TRIGGER links_notify AFTER INSERT OR UPDATE OR DELETE ON links
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER emu_routes_notify AFTER INSERT OR UPDATE OR DELETE ON emu_routes
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER links_truncate AFTER TRUNCATE ON links
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER emu_routes_truncate AFTER TRUNCATE ON emu_routes
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();
