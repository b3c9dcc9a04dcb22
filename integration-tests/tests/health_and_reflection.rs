//! Every gRPC server answers grpc.health.v1 and lists its services through gRPC
//! reflection built from the same descriptor set as the registry.

#![allow(clippy::unwrap_used)]

use futures::StreamExt as _;
use gitcluster_integration_tests::Cluster;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn listed_services(channel: tonic::transport::Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    match reply.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn serving(channel: tonic::transport::Channel) -> i32 {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a token")
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_node_and_router_serve_health_and_reflection() {
    let cluster = Cluster::builder().storages(1).routers(1).start().await;
    for channel in [cluster.channel(0).await, cluster.router_channel(0).await] {
        assert_eq!(
            serving(channel.clone()).await,
            ServingStatus::Serving as i32
        );
        let services = listed_services(channel).await;
        for expected in [
            "gitcluster.v1.RepositoryService",
            "gitcluster.v1.RefService",
            "gitcluster.v1.SmartHTTPService",
            "grpc.health.v1.Health",
        ] {
            assert!(
                services.iter().any(|s| s == expected),
                "{expected} missing from {services:?}"
            );
        }
    }
}
