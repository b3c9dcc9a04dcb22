//! gRPC clients of the storage nodes, one lazily connected channel per address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A repository client carrying the internal token.
pub type RepositoryClient = RepositoryServiceClient<InterceptedService<Channel, BearerToken>>;

/// Channels to storage nodes, shared by every job (tonic channels multiplex calls and
/// reconnect on their own).
#[derive(Clone)]
pub struct Nodes {
    token: BearerToken,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Nodes {
    /// Clients will present `token` (when set).
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Nodes {
            token: BearerToken::new(token)?,
            channels: Arc::default(),
        })
    }

    /// A client of the node at `address` (`http://host:port`).
    pub fn repository(&self, address: &str) -> Result<RepositoryClient, String> {
        let channel = {
            let mut channels = self
                .channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match channels.get(address) {
                Some(c) => c.clone(),
                None => {
                    let c = Endpoint::from_shared(address.to_owned())
                        .map_err(|e| format!("invalid storage address {address:?}: {e}"))?
                        .connect_timeout(Duration::from_secs(5))
                        .tcp_nodelay(true)
                        .connect_lazy();
                    channels.insert(address.to_owned(), c.clone());
                    c
                }
            }
        };
        Ok(RepositoryServiceClient::with_interceptor(
            channel,
            self.token.clone(),
        ))
    }
}
