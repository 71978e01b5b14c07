-- Synthetic flows of emulations: inserting a row starts the flow in the running emulation
-- `node` (within milliseconds, through the same notifications as the other tables); deleting
-- it stops the flow if it still runs. A row is a request: changing it once the flow started
-- changes nothing (delete it and insert another). `up` deletes the emulation's rows, so a new
-- run starts with none. What the flows did is in `metrics` (the emulator reports per flow,
-- `port` being the flow's name) and, one row per flow, in the view `emu_flow_results`.
CREATE TABLE emu_flows (
    id bigserial PRIMARY KEY,
    node text NOT NULL,
    -- Default: row<id>. Unique within the emulation, also against the topology's flows.
    name text CHECK (name ~ '^[A-Za-z][A-Za-z0-9_-]{0,31}$'),
    src text NOT NULL,
    dst text NOT NULL,
    proto text NOT NULL DEFAULT 'tcp' CHECK (proto IN ('tcp', 'udp')),
    -- Length: bytes, milliseconds, or both (it ends at the first reached).
    bytes bigint CHECK (bytes > 0),
    duration_ms bigint CHECK (duration_ms > 0),
    -- TCP: a cap; UDP: the sending rate (required), bit/s of payload.
    rate_bps bigint CHECK (rate_bps BETWEEN 1 AND 10000000000000),
    -- The packets' DSCP: what `sched = "wfq"` links share by.
    weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 63),
    -- Starts this long after the row arrives.
    start_ms bigint NOT NULL DEFAULT 0 CHECK (start_ms BETWEEN 0 AND 86400000),
    -- UDP on/off bursts.
    on_ms bigint CHECK (on_ms > 0),
    off_ms bigint CHECK (off_ms >= 0),
    packet integer CHECK (packet BETWEEN 1 AND 8972),
    port integer CHECK (port BETWEEN 1 AND 65535),
    cc text CHECK (cc IN ('cubic', 'reno', 'none')),
    CHECK (bytes IS NOT NULL OR duration_ms IS NOT NULL),
    CHECK (proto = 'tcp' OR rate_bps IS NOT NULL),
    CHECK ((on_ms IS NULL) = (off_ms IS NULL))
);
CREATE INDEX emu_flows_node ON emu_flows (node);

CREATE TRIGGER emu_flows_notify AFTER INSERT OR UPDATE OR DELETE ON emu_flows
    FOR EACH ROW EXECUTE FUNCTION linerate_notify();
CREATE TRIGGER emu_flows_truncate AFTER TRUNCATE ON emu_flows
    FOR EACH STATEMENT EXECUTE FUNCTION linerate_notify();

-- Each flow row with the latest of its counters: state (0 waiting, 1 running, 2 finished,
-- 3 failed, 4 stopped), bytes sent and received, start and finish (Unix ms, the emulator's
-- clock) and flow completion time (µs). NULL until the emulator first reports the flow.
CREATE VIEW emu_flow_results AS
SELECT f.id, f.node, coalesce(f.name, 'row' || f.id) AS name, f.src, f.dst, f.proto,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_state'
        ORDER BY m.at DESC LIMIT 1) AS state,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_tx_bytes'
        ORDER BY m.at DESC LIMIT 1) AS sent_bytes,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_rx_bytes'
        ORDER BY m.at DESC LIMIT 1) AS received_bytes,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_started_ms'
        ORDER BY m.at DESC LIMIT 1) AS started_ms,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_finished_ms'
        ORDER BY m.at DESC LIMIT 1) AS finished_ms,
    (SELECT value FROM metrics m WHERE m.node = f.node
        AND m.port = coalesce(f.name, 'row' || f.id) AND m.name = 'flow_fct_us'
        ORDER BY m.at DESC LIMIT 1) AS fct_us
FROM emu_flows f;
