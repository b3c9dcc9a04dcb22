-- One worker per (repository $1, target $2) across every replicator: a
-- transaction-scoped advisory lock (false when another holds it). The copy runs while
-- this transaction sits idle, so an idle_in_transaction_session_timeout set on the
-- database or role is lifted for it (it would end every long copy and free the lock).
SELECT pg_try_advisory_xact_lock(hashtextextended($1::bigint::text || '/' || $2::text, 0)),
       set_config('idle_in_transaction_session_timeout', '0', true)
