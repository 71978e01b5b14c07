-- The control plane's configuration and metrics. Every object is created unqualified so that
-- it lands in the first schema of the connection's search_path: PgStore::connect_in_schema
-- runs this migration once per schema (tests get one each).

-- Nodes that have registered, with the capabilities they named last.
CREATE TABLE nodes (
    id text PRIMARY KEY,
    capabilities text[] NOT NULL DEFAULT '{}',
    last_seen timestamptz
);

CREATE TABLE routes (
    id bigserial PRIMARY KEY,
    node text NOT NULL,
    prefix cidr NOT NULL,
    port text NOT NULL,
    next_hop macaddr NOT NULL,
    weight integer NOT NULL DEFAULT 1 CHECK (weight > 0)
);
CREATE INDEX routes_node ON routes (node);

CREATE TABLE flows (
    id bigserial PRIMARY KEY,
    node text NOT NULL,
    src cidr,
    dst cidr,
    proto smallint CHECK (proto BETWEEN 0 AND 255),
    src_port integer CHECK (src_port BETWEEN 0 AND 65535),
    dst_port integer CHECK (dst_port BETWEEN 0 AND 65535),
    route_id bigint NOT NULL REFERENCES routes (id) ON DELETE CASCADE
);
CREATE INDEX flows_node ON flows (node);
-- The cascade from routes looks flows up by route.
CREATE INDEX flows_route_id ON flows (route_id);

CREATE TABLE port_settings (
    node text,
    port text,
    scheduler text NOT NULL DEFAULT 'fcfs' CHECK (scheduler IN ('fcfs', 'wrr', 'drr')),
    weights integer[] NOT NULL DEFAULT '{}',
    shaper_rate_bps bigint,
    shaper_burst_bytes integer,
    link_rate_bps bigint,
    -- A shaper needs both; refusing half of one here beats ignoring it on the node.
    CHECK ((shaper_rate_bps IS NULL) = (shaper_burst_bytes IS NULL)),
    PRIMARY KEY (node, port)
);

-- Counter readings. Counters are u64 on the nodes; a value above 2^63-1 is stored saturated at
-- 2^63-1 (bigint's largest), which no real counter reaches.
CREATE TABLE metrics (
    node text NOT NULL,
    at timestamptz NOT NULL,
    name text NOT NULL,
    port text,
    value bigint NOT NULL
);
CREATE INDEX metrics_node_at ON metrics (node, at);

-- Announces every configuration row written, so the controller can push it to its node at
-- once. The channel is `linerate_changes` for the schema `public` and
-- `linerate_changes_<schema>` for any other, so stores in different schemas of one database
-- (tests) do not hear each other. The payload is the whole row (old and new) as JSON; rows are
-- a few hundred bytes, far below NOTIFY's 8000-byte limit, and a row that did exceed it would
-- make its statement fail rather than be lost silently.
CREATE FUNCTION linerate_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- An update that changed nothing has nothing to announce.
    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(
        CASE WHEN TG_TABLE_SCHEMA = 'public' THEN 'linerate_changes'
             ELSE 'linerate_changes_' || TG_TABLE_SCHEMA END,
        json_build_object(
            'table', TG_TABLE_NAME,
            'op', TG_OP,
            'new', CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE row_to_json(NEW) END,
            'old', CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE row_to_json(OLD) END
        )::text
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE ON routes
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER flows_notify AFTER INSERT OR UPDATE OR DELETE ON flows
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER port_settings_notify AFTER INSERT OR UPDATE OR DELETE ON port_settings
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
