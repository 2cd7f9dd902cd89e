-- OAuth2 access tokens shared by every worker of an instance (shared/http/tokens.py).
--
-- The database never holds a secret in clear (docs/architecture.md §6): access_token and
-- refresh_token are AES-GCM sealed (12-byte nonce || ciphertext || tag) under a key
-- derived from the instance's own resolved credentials, which never reach the
-- database. refresh_token is set only when the server issued one (rotation).
-- updated_at is when the token was obtained; with expires_at it gives the lifetime.
CREATE TABLE oauth_tokens (
    instance_id   text PRIMARY KEY REFERENCES instances (id) ON DELETE CASCADE,
    access_token  bytea NOT NULL CHECK (octet_length(access_token) > 28),
    refresh_token bytea CHECK (octet_length(refresh_token) > 28),
    expires_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
