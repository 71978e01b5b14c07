-- The emulators of an emulation that spans hosts (`[placement] hosts = ["a", "b"]`): each
-- registers its host's tunnel address here and refreshes `seen` every 2 s while it runs; the
-- emulation is placed once every named host has a fresh row. `down` removes the host's row.
CREATE TABLE emu_hosts (
    emulation text NOT NULL,
    host text NOT NULL,
    tunnel text NOT NULL,
    pid integer,
    seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (emulation, host)
);
