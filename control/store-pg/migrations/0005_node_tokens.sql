-- Per-node bearer tokens, kept as SHA-256 digests (64 lowercase hex digits), never in clear.
-- A node presents its token and its id; the controller finds the token's digest here and
-- compares the node it belongs to. The controller re-reads the table every 2 s, so a token is
-- rotated by inserting the new one, moving the node over and deleting the old one:
--   INSERT INTO node_tokens (node, token_sha256)
--       VALUES ('r1', encode(sha256(convert_to('the-new-token', 'UTF8')), 'hex'));
CREATE TABLE node_tokens (
    token_sha256 text PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    node text NOT NULL CHECK (node ~ '^[A-Za-z0-9._:-]{1,64}$'),
    created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX node_tokens_node ON node_tokens (node);
