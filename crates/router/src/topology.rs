//! The cluster's shape as the router sees it: virtual storages and their storage
//! nodes, read from Postgres (`virtual_storages`, `storages`) and reloaded whenever
//! `gitcluster_topology` is notified. Each storage carries a lazily connected gRPC
//! client that presents the internal token, and a lazily connected read lane.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use gitcluster_proto::MAX_MESSAGE_BYTES;
use gitcluster_proto::auth::BearerToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::lane::Lane;
use crate::metrics::READ_DISTRIBUTION_METRIC;

/// Channel to a storage node that adds the internal token to every call.
pub type NodeChannel = InterceptedService<Channel, BearerToken>;

/// One storage node of a virtual storage.
#[derive(Debug)]
pub struct Storage {
    /// Storage name, for example `gitaly-1`.
    pub name: String,
    /// gRPC address, for example `http://10.0.0.1:8075`.
    pub address: String,
    /// The lazily connected channel (shared by every call to this node).
    pub channel: NodeChannel,
    /// The read fast path's connections, one per serving thread (`None` for
    /// addresses it cannot serve).
    pub lane: Option<Lane>,
    /// This storage's series of `gitcluster_router_read_distribution_total`,
    /// registered once instead of looked up on every read.
    pub reads: metrics::Counter,
}

impl Storage {
    /// A raw-bytes gRPC client with the message limits and compression of the proxy.
    pub fn grpc(&self) -> tonic::client::Grpc<NodeChannel> {
        tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .accept_compressed(CompressionEncoding::Gzip)
    }
}

/// One virtual storage.
#[derive(Debug)]
pub struct VirtualStorage {
    /// Its name.
    pub name: String,
    /// Replicas per repository; `None` means every storage.
    pub replication_factor: Option<i32>,
    /// Its storages by name.
    pub storages: BTreeMap<String, Arc<Storage>>,
}

/// Every virtual storage by name.
#[derive(Debug, Default)]
pub struct Topology {
    /// Virtual storages by name.
    pub virtual_storages: HashMap<String, VirtualStorage>,
}

impl Topology {
    /// Looks a virtual storage up.
    pub fn get(&self, name: &str) -> Option<&VirtualStorage> {
        self.virtual_storages.get(name)
    }

    /// Every `(virtual storage, storage)` pair.
    pub fn storages(&self) -> impl Iterator<Item = (&VirtualStorage, &Arc<Storage>)> {
        self.virtual_storages
            .values()
            .flat_map(|vs| vs.storages.values().map(move |s| (vs, s)))
    }
}

/// The current topology, swapped whole on reload.
#[derive(Debug)]
pub struct TopologyHandle {
    current: RwLock<Arc<Topology>>,
    token: BearerToken,
    changed: tokio::sync::watch::Sender<u64>,
}

impl TopologyHandle {
    /// An empty topology whose storage clients will present `internal_token`.
    pub fn new(internal_token: Option<&str>) -> anyhow::Result<Self> {
        Ok(TopologyHandle {
            current: RwLock::new(Arc::new(Topology::default())),
            token: BearerToken::new(internal_token).context("internal token")?,
            changed: tokio::sync::watch::channel(0).0,
        })
    }

    /// The current topology.
    pub fn get(&self) -> Arc<Topology> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A receiver that sees a new value after every reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Reads the topology from the database and swaps it in. Storages whose address
    /// did not change keep their channel (and its connection).
    pub async fn reload(&self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        let vs_rows = client
            .query(
                "SELECT name, default_replication_factor FROM virtual_storages",
                &[],
            )
            .await
            .context("read virtual storages")?;
        let rows = client
            .query(
                "SELECT virtual_storage, storage, address FROM storages ORDER BY 1, 2",
                &[],
            )
            .await
            .context("read storages")?;
        let previous = self.get();
        let mut next = Topology::default();
        for row in vs_rows {
            let name: String = row.get(0);
            next.virtual_storages.insert(
                name.clone(),
                VirtualStorage {
                    name,
                    replication_factor: row.get(1),
                    storages: BTreeMap::new(),
                },
            );
        }
        for row in rows {
            let (vs, name, address): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            let reused = previous
                .get(&vs)
                .and_then(|v| v.storages.get(&name))
                .filter(|s| s.address == address)
                .cloned();
            let storage = match reused {
                Some(s) => s,
                None => match self.connect(&vs, &name, &address) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        warn!(virtual_storage = %vs, storage = %name, %address, error = %e,
                            "storage address is not usable; storage ignored");
                        continue;
                    }
                },
            };
            if let Some(v) = next.virtual_storages.get_mut(&vs) {
                v.storages.insert(name, storage);
            }
        }
        let count = next.storages().count();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        self.changed.send_modify(|v| *v += 1);
        info!(
            storages = count,
            virtual_storages = self.get().virtual_storages.len(),
            "topology loaded"
        );
        Ok(())
    }

    fn connect(&self, virtual_storage: &str, name: &str, address: &str) -> anyhow::Result<Storage> {
        let channel = Endpoint::from_shared(address.to_owned())
            .context("parse storage address")?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true)
            .connect_lazy();
        Ok(Storage {
            name: name.to_owned(),
            address: address.to_owned(),
            channel: InterceptedService::new(channel, self.token.clone()),
            lane: Lane::new(name, address, &self.token),
            reads: metrics::counter!(READ_DISTRIBUTION_METRIC,
                "virtual_storage" => virtual_storage.to_owned(), "storage" => name.to_owned()),
        })
    }
}
