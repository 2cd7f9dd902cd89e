-- Configuration applied from the installation file (docs/architecture.md §6, §7):
-- organizations, connectors (+ every content version seen), instances,
-- permissions and schedules.

-- Ids travel in routing keys (<entity>.<action>.<org_id>.<instance_id>): no dots.
CREATE FUNCTION bss_sync_valid_id(value text) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN value ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$';

-- The database never holds a secret: every credential is a reference.
CREATE FUNCTION bss_sync_credential_references(creds jsonb) RETURNS boolean
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    BEGIN ATOMIC
        SELECT coalesce(bool_and(jsonb_typeof(c.value) = 'string'
                                 AND (c.value #>> '{}') ~ '^(env|file):.+'), true)
          FROM jsonb_each(creds) AS c;
    END;

CREATE TABLE organizations (
    id             text PRIMARY KEY CHECK (bss_sync_valid_id(id)),
    name           text NOT NULL CHECK (name <> ''),
    timezone       text NOT NULL DEFAULT 'UTC',
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz,
    CHECK (active = (deactivated_at IS NULL))
);

CREATE TABLE connectors (
    id         text PRIMARY KEY CHECK (bss_sync_valid_id(id)),
    title      text NOT NULL,
    version    text NOT NULL,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    document   jsonb NOT NULL CHECK (jsonb_typeof(document) = 'object'),
    sources    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(sources) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE connector_versions (
    connector_id    text NOT NULL REFERENCES connectors (id) ON DELETE CASCADE,
    sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    title           text NOT NULL,
    version         text NOT NULL,
    document        jsonb NOT NULL,
    first_loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector_id, sha256)
);

CREATE TABLE instances (
    id             text PRIMARY KEY CHECK (bss_sync_valid_id(id)),
    org_id         text NOT NULL REFERENCES organizations (id) ON DELETE RESTRICT,
    connector_id   text NOT NULL REFERENCES connectors (id) ON DELETE RESTRICT,
    name           text NOT NULL CHECK (name <> ''),
    server_url     text CHECK (server_url ~ '^https?://'),
    variables      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(variables) = 'object'),
    credentials    jsonb NOT NULL DEFAULT '{}'
                   CHECK (jsonb_typeof(credentials) = 'object'
                          AND bss_sync_credential_references(credentials)),
    settings       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz,
    CHECK (active = (deactivated_at IS NULL))
);
CREATE INDEX instances_org_idx ON instances (org_id);
CREATE INDEX instances_connector_idx ON instances (connector_id);

CREATE TABLE permissions (
    instance_id text NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    entity      text NOT NULL CHECK (entity IN ('account', 'contact', 'order', 'invoice',
                                                'product', 'payment', 'case', 'subscription')),
    direction   text NOT NULL CHECK (direction IN ('push', 'pull')),
    action      text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, entity, direction, action)
);

-- Most specific wins: instance, then organization, then installation.
CREATE TABLE schedules (
    scope      text NOT NULL CHECK (scope IN ('installation', 'organization', 'instance')),
    scope_id   text NOT NULL DEFAULT '',
    cron       text NOT NULL CHECK (cron <> ''),
    timezone   text,                       -- NULL: the organization's (else installation's)
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, scope_id),
    CHECK ((scope = 'installation') = (scope_id = ''))
);
