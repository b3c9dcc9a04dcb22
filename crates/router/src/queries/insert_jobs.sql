-- Outbox rows for `update` jobs from source $4 to each target, inserted in the same
-- transaction as the state change that makes them necessary (transactional outbox):
-- $1 job ids, $2 repository id, $3 virtual storage, $4 source, $5 trace context,
-- $6 targets (same order as $1). They start `pending` until publish is confirmed.
INSERT INTO replication_jobs
    (id, repository_id, virtual_storage, change, source_storage, target_storage, trace_context)
SELECT t.id, $2, $3, 'update', $4, t.target, $5
FROM unnest($1::uuid[], $6::text[]) AS t(id, target)
