//! Clients of other storage nodes' InternalService (replication's source, and the
//! ssh helper that tunnels `git fetch` to it).

use std::time::Duration;

use gitcluster_proto::MAX_MESSAGE_BYTES;
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::internal_service_client::InternalServiceClient;
use tonic::Status;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

/// Connects an InternalService client to `address` with the shared token.
pub async fn internal_client(
    address: &str,
    token: Option<&str>,
) -> Result<
    InternalServiceClient<tonic::service::interceptor::InterceptedService<Channel, BearerToken>>,
    Status,
> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| Status::invalid_argument(format!("invalid source address {address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect to source {address}: {e}")))?;
    let auth = BearerToken::new(token).map_err(|e| Status::internal(e.to_string()))?;
    Ok(InternalServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .accept_compressed(CompressionEncoding::Gzip))
}
