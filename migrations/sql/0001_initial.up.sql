-- gitcluster schema v1: topology, repository metadata, health observations, the
-- replication outbox and leases. Geo tables arrive with the Geo work.

-- Topology (written by `gitcluster topology apply`, read by every service).
CREATE TABLE virtual_storages (
    name                       text PRIMARY KEY CHECK (name <> '' AND name !~ '[/[:space:]]'),
    -- NULL means "replicate to every storage of the virtual storage".
    default_replication_factor integer CHECK (default_replication_factor IS NULL OR default_replication_factor >= 1),
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE storages (
    virtual_storage text NOT NULL REFERENCES virtual_storages (name) ON DELETE CASCADE,
    storage         text NOT NULL CHECK (storage <> '' AND storage !~ '[/[:space:]]'),
    address         text NOT NULL CHECK (address <> ''),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (virtual_storage, storage)
);

-- One row per repository: the expected (virtual) state. The row doubles as the
-- per-repository lock: writers take it FOR UPDATE before touching replica rows.
CREATE TABLE repositories (
    repository_id   bigint PRIMARY KEY,
    virtual_storage text   NOT NULL,
    relative_path   text   NOT NULL CHECK (relative_path <> ''),
    -- Physical path on every replica: @cluster/repositories/xx/yy/<id> (or the
    -- relative path for tracked legacy repositories). Never changes on rename.
    replica_path    text   NOT NULL,
    "primary"       text,
    -- Highest generation of any replica: a write bumps it to max + 1.
    generation      bigint NOT NULL DEFAULT 0 CHECK (generation >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (virtual_storage, relative_path)
);
CREATE INDEX repositories_replica_path_idx ON repositories (virtual_storage, replica_path);

-- Ids are reserved before replicas are created; failed creations leave gaps.
CREATE SEQUENCE repositories_repository_id_seq START 1 INCREMENT 1 OWNED BY repositories.repository_id;

-- Desired placement: the assigned storages of a repository (its replication factor).
CREATE TABLE repository_assignments (
    repository_id bigint NOT NULL REFERENCES repositories (repository_id) ON DELETE CASCADE,
    storage       text   NOT NULL,
    PRIMARY KEY (repository_id, storage)
);

-- Confirmed physical state: one row per replica that exists.
CREATE TABLE storage_repositories (
    repository_id             bigint NOT NULL REFERENCES repositories (repository_id) ON DELETE CASCADE,
    storage                   text   NOT NULL,
    -- The minimum generation this replica is known to contain.
    generation                bigint NOT NULL CHECK (generation >= 0),
    verified_at               timestamptz,
    verification_leased_until timestamptz,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, storage)
);
CREATE INDEX storage_repositories_verification_idx
    ON storage_repositories (verified_at NULLS FIRST) WHERE verification_leased_until IS NULL;

-- Health observations: one row per (observer, storage), refreshed on every probe.
CREATE TABLE node_status (
    observer                text NOT NULL,
    virtual_storage         text NOT NULL,
    storage                 text NOT NULL,
    last_contact_attempt_at timestamptz NOT NULL,
    last_seen_active_at     timestamptz,
    PRIMARY KEY (observer, virtual_storage, storage)
);

-- The replication outbox and ledger. Rows are inserted in the same transaction as
-- the write that makes them necessary, published after commit, and updated by the
-- replicator; RabbitMQ only carries the job id and a copy of these columns.
CREATE TYPE replication_job_state AS ENUM ('pending', 'published', 'in_progress', 'done', 'failed', 'dead');

CREATE TABLE replication_jobs (
    id                uuid PRIMARY KEY,
    repository_id     bigint NOT NULL REFERENCES repositories (repository_id) ON DELETE CASCADE,
    virtual_storage   text   NOT NULL,
    change            text   NOT NULL CHECK (change IN ('update', 'delete_replica')),
    source_storage    text,
    target_storage    text   NOT NULL,
    -- Generation of the source read before copying; the target is raised to it only.
    source_generation bigint,
    state             replication_job_state NOT NULL DEFAULT 'pending',
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    error             text,
    trace_context     jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    published_at      timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The outbox relay scans unpublished rows.
CREATE INDEX replication_jobs_pending_idx ON replication_jobs (created_at) WHERE state = 'pending';
-- "Is a job already pending for this target?" (reconciler, router).
CREATE INDEX replication_jobs_target_idx ON replication_jobs (repository_id, target_storage)
    WHERE state IN ('pending', 'published', 'in_progress', 'failed');

-- Named leases: one active reconciler, one active Geo log cursor per site.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    owner      text,
    term       bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT '-infinity'
);

-- Cache invalidation hints for routers. NOTIFY is only a hint: a listener that
-- reconnects rebuilds its cache from the tables.
CREATE FUNCTION gitcluster_notify_metadata() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gitcluster_metadata', json_build_object(
        'table', TG_TABLE_NAME,
        'repository_id', CASE WHEN TG_OP = 'DELETE' THEN OLD.repository_id ELSE NEW.repository_id END
    )::text);
    RETURN NULL;
END $$;

CREATE TRIGGER repositories_notify AFTER INSERT OR UPDATE OR DELETE ON repositories
    FOR EACH ROW EXECUTE FUNCTION gitcluster_notify_metadata();
CREATE TRIGGER repository_assignments_notify AFTER INSERT OR UPDATE OR DELETE ON repository_assignments
    FOR EACH ROW EXECUTE FUNCTION gitcluster_notify_metadata();
-- Verification churn does not change routing: only generation changes notify.
CREATE TRIGGER storage_repositories_notify_ins_del AFTER INSERT OR DELETE ON storage_repositories
    FOR EACH ROW EXECUTE FUNCTION gitcluster_notify_metadata();
CREATE TRIGGER storage_repositories_notify_upd AFTER UPDATE OF generation ON storage_repositories
    FOR EACH ROW WHEN (OLD.generation IS DISTINCT FROM NEW.generation)
    EXECUTE FUNCTION gitcluster_notify_metadata();

CREATE FUNCTION gitcluster_notify_topology() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gitcluster_topology', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER virtual_storages_notify AFTER INSERT OR UPDATE OR DELETE ON virtual_storages
    FOR EACH STATEMENT EXECUTE FUNCTION gitcluster_notify_topology();
CREATE TRIGGER storages_notify AFTER INSERT OR UPDATE OR DELETE ON storages
    FOR EACH STATEMENT EXECUTE FUNCTION gitcluster_notify_topology();
