//! The names of the router's request metrics, shared by the proxy and the topology
//! (which keeps a read counter per storage).

/// Counter of finished requests by method and gRPC code.
pub const REQUESTS_METRIC: &str = "gitcluster_router_requests_total";
/// Counter of reads routed to each storage.
pub const READ_DISTRIBUTION_METRIC: &str = "gitcluster_router_read_distribution_total";
/// Counter of mutators the primary applied without changing any ref or HEAD, which
/// were therefore not recorded (no generation bump, no jobs).
pub const UNCHANGED_WRITES_METRIC: &str = "gitcluster_router_unchanged_writes_total";

/// Counts one finished request of `method` with `code`.
pub fn count_request(method: &str, code: tonic::Code) {
    metrics::counter!(REQUESTS_METRIC, "method" => method.to_owned(), "code" => format!("{code:?}"))
        .increment(1);
}
