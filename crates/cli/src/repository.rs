//! `create-repository`: a client of `gitcluster.v1.RepositoryService`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use gitcluster_proto::auth::BearerToken;
use gitcluster_proto::v1::repository_service_client::RepositoryServiceClient;
use gitcluster_proto::v1::{CreateRepositoryRequest, Repository};
use serde_json::json;
use tonic::transport::Endpoint;

use crate::{Format, print_json};

/// Flags of `create-repository`.
#[derive(Debug, clap::Args)]
pub(crate) struct CreateArgs {
    /// gRPC address of a router or storage node: `tcp://host:port` or `http://host:port`.
    #[arg(long)]
    address: String,
    /// Virtual storage (on a storage node: the storage name) to create the repository in.
    #[arg(long)]
    virtual_storage: String,
    /// Relative path of the repository, for example `group/project.git`.
    #[arg(long)]
    relative_path: String,
    /// Branch HEAD points at; the server's default (`main`) when omitted.
    #[arg(long)]
    default_branch: Option<String>,
    /// File holding the auth token; overrides `GITCLUSTER_TOKEN`.
    #[arg(long)]
    token_file: Option<PathBuf>,
}

/// Turns `tcp://` (Praefect's spelling) into the `http://` tonic dials.
fn endpoint(address: &str) -> anyhow::Result<Endpoint> {
    let uri = match address.split_once("://") {
        Some(("tcp", rest)) => format!("http://{rest}"),
        Some(("http", _)) => address.to_owned(),
        _ => bail!("unsupported address {address:?}: use tcp://host:port or http://host:port"),
    };
    Ok(Endpoint::from_shared(uri)
        .with_context(|| format!("parse address {address:?}"))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60)))
}

fn token(args: &CreateArgs) -> anyhow::Result<Option<String>> {
    // Secrets come from the environment or a file, never from a flag value (ps shows flags).
    match &args.token_file {
        Some(path) => {
            let raw = std::fs::read_to_string(path)
                .with_context(|| format!("read token file {}", path.display()))?;
            Ok(Some(raw.trim_end_matches(['\r', '\n']).to_owned()))
        }
        None => Ok(std::env::var("GITCLUSTER_TOKEN").ok()),
    }
}

/// Calls `CreateRepository` and prints what was created.
pub(crate) async fn create(args: &CreateArgs, format: Format) -> anyhow::Result<()> {
    let auth = BearerToken::new(token(args)?.as_deref())?;
    let channel = endpoint(&args.address)?
        .connect()
        .await
        .with_context(|| format!("connect to {}", args.address))?;
    let mut client = RepositoryServiceClient::with_interceptor(channel, auth);
    let request = CreateRepositoryRequest {
        repository: Some(Repository {
            storage_name: args.virtual_storage.clone(),
            relative_path: args.relative_path.clone(),
        }),
        default_branch: args.default_branch.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Err(status) = client.create_repository(request).await {
        bail!("{:?}: {}", status.code(), status.message());
    }
    match format {
        Format::Text => say!(
            "created repository {:?} on virtual storage {:?}",
            args.relative_path,
            args.virtual_storage
        ),
        Format::Json => print_json(&json!({
            "created": true,
            "virtual_storage": args.virtual_storage,
            "relative_path": args.relative_path,
        })),
    }
    Ok(())
}
