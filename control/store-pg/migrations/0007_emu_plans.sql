-- Placement decided by the controller (`linerate controller --emulation FILE`) for an emulation
-- whose `[placement]` lets its hosts register (`hosts = ["a", "b"]` or `hosts = 2`): once the
-- hosts have registered in emu_hosts, the controller writes which host builds each node, in
-- one transaction; the emulators wait for it. It stays while any host of the emulation runs (a
-- restarted part gets the same part back) and goes when none has been heard from for 30 s.
CREATE TABLE emu_plans (
    emulation text PRIMARY KEY,
    -- [[host, tunnel], ...], sorted by host.
    hosts jsonb NOT NULL,
    made timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE emu_placement (
    emulation text NOT NULL REFERENCES emu_plans (emulation) ON DELETE CASCADE,
    node text NOT NULL,
    host text NOT NULL,
    PRIMARY KEY (emulation, node)
);
